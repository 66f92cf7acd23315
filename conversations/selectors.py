"""Reads: what a user may see, and the history a request is built from."""

from __future__ import annotations

import datetime as dt
import functools
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.contrib.postgres.search import SearchHeadline, SearchQuery, SearchVector
from django.db import connection
from django.db.models import Case, Exists, OuterRef, Q, QuerySet, Subquery, TextField, Value, When
from django.db.models.expressions import RawSQL
from django.db.models.functions import Greatest, Lower, StrIndex, Substr
from django.http import Http404

from .context import AttachmentRef, Turn
from .models import Attachment, Conversation, Message, Persona, Summary, from_row, quoted

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


def conversation_for_user(user: AbstractBaseUser | AnonymousUser, conversation_id: uuid.UUID | str) -> Conversation:
    """The user's own conversation, or Http404 (never 403: nobody learns another's thread exists)."""
    if not user.is_authenticated:
        raise Http404
    try:
        return Conversation.objects.select_related("persona").get(pk=conversation_id, owner_id=user.pk)
    except (Conversation.DoesNotExist, ValueError, TypeError) as exc:
        raise Http404 from exc


def conversations_for_user(user: AbstractBaseUser) -> QuerySet[Conversation]:
    """The user's threads that have at least one message: pinned first, then newest first."""
    has_messages = Message.objects.filter(conversation=OuterRef("pk"))
    return (
        Conversation.objects.filter(owner_id=user.pk)
        .filter(Exists(has_messages))
        .select_related("persona")
        .order_by("-pinned", "-updated_at")
    )


def personas_for_user(user: AbstractBaseUser) -> QuerySet[Persona]:
    """Active personas the user may start a thread with (no groups set means everyone)."""
    groups = user.groups.all()  # type: ignore[attr-defined]
    return (
        Persona.objects.filter(is_active=True)
        .filter(Q(groups__isnull=True) | Q(groups__in=groups))
        .distinct()
        .order_by("position", "name")
    )


def persona_for_user(user: AbstractBaseUser, slug: str | None) -> Persona | None:
    """The persona by slug if the user may use it; the default persona when no slug is given."""
    personas = personas_for_user(user)
    if slug:
        return personas.filter(slug=slug).first()
    return personas.filter(is_default=True).first() or personas.first()


def streaming_reply(conversation_id: uuid.UUID) -> Message | None:
    """The reply being generated in this conversation, if any."""
    return Message.objects.filter(conversation_id=conversation_id, status=Message.Status.STREAMING).first()


# -- the tree: the active path, versions, and the history of a request ---------------------------------
_TABLE = Message._meta.db_table
# The path from message %s up to its root, one row per message, `depth` 0 at the start: a recursive
# query over the primary key, so it reads the path's rows only, whatever the branches around it.
# Each step looks its parent up in a scalar subquery, which every database runs as one primary-key
# lookup; written as a join, PostgreSQL planned a hash join that scanned the whole table at every
# step (200 ms for a 1,000-message path in a table of 1,000 rows, statistics or not; docs/performance.md).
_PATH_CTE = (
    f"WITH RECURSIVE path(id, parent_id, depth) AS ("
    f" SELECT id, parent_id, 0 FROM {_TABLE} WHERE id = %s AND conversation_id = %s"
    f" UNION ALL SELECT p.parent_id, (SELECT m.parent_id FROM {_TABLE} m WHERE m.id = p.parent_id), p.depth + 1"
    f" FROM path p WHERE p.parent_id IS NOT NULL)"
)  # noqa: S608 - the table name from the model, values as parameters
PAGE_FIELDS = ("id", "conversation_id", "parent_id", "role", "content", "status", "client_id", "error_code")


def path_ids(conversation_id: uuid.UUID, leaf_id: int | None) -> list[int]:
    """The ids from the root to `leaf_id`, in order (one query)."""
    if leaf_id is None:
        return []
    with connection.cursor() as cursor:
        cursor.execute(f"{_PATH_CTE} SELECT id FROM path ORDER BY depth DESC", [leaf_id, _db_id(conversation_id)])
        return [row[0] for row in cursor.fetchall()]


def descend(conversation_id: uuid.UUID, message_id: int) -> int:
    """The most recently active descendant of `message_id` (following each message's active child),
    or the message itself: one query."""
    sql = (  # each step a primary-key lookup in a scalar subquery, as in _PATH_CTE
        f"WITH RECURSIVE down(id, active_child_id, depth) AS ("
        f" SELECT id, active_child_id, 0 FROM {_TABLE} WHERE id = %s AND conversation_id = %s"
        f" UNION ALL SELECT d.active_child_id,"
        f" (SELECT m.active_child_id FROM {_TABLE} m WHERE m.id = d.active_child_id), d.depth + 1"
        f" FROM down d WHERE d.active_child_id IS NOT NULL)"
        f" SELECT id FROM down ORDER BY depth DESC LIMIT 1"
    )  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [message_id, _db_id(conversation_id)])
        row = cursor.fetchone()
    return row[0] if row else message_id


def _db_id(conversation_id: uuid.UUID | str) -> str | uuid.UUID:
    """The conversation id as the database stores it (SQLite keeps UUIDs as hex text)."""
    return Conversation._meta.pk.get_db_prep_value(uuid.UUID(str(conversation_id)), connection)


def _with_summaries(qs: QuerySet[Message], fields: tuple[str, ...], summaries: bool) -> QuerySet[Message]:
    if not summaries:
        return qs.only(*fields)
    # The summary through each message, if any, in the same query (a reverse one-to-one join).
    return qs.select_related("summary").only(*fields, "summary__id", "summary__text", "summary__through_id")


def path_summary(path: list[Message]) -> Summary | None:
    """The summary reaching furthest along a path loaded with `summaries=True` (no query)."""
    for m in reversed(path):
        summary = getattr(m, "summary", None)
        if summary is not None:
            return summary
    return None


def path_messages(
    conversation: Conversation,
    *,
    leaf_id: int | None = None,
    fields: tuple[str, ...] = PAGE_FIELDS,
    summaries: bool = False,
) -> list[Message]:
    """The messages of the path from the root to `leaf_id` (default: the active leaf), in order, in one
    query: the rows whose id the recursive query finds (`id IN (WITH RECURSIVE …)`, a primary-key
    lookup per message; joining the recursive result to the table instead made SQLite scan the table
    once per path row), put in order by their parent links."""
    leaf = conversation.active_leaf_id if leaf_id is None else leaf_id
    if leaf is None:
        return []
    on_path = RawSQL(f"{_PATH_CTE} SELECT id FROM path", (leaf, _db_id(conversation.pk)))
    fields = tuple(dict.fromkeys((*fields, "parent_id")))
    rows = {m.pk: m for m in _with_summaries(Message.objects.filter(pk__in=on_path), fields, summaries)}
    path: list[Message] = []
    node = rows.get(leaf)
    while node is not None:
        path.append(node)
        node = rows.get(node.parent_id) if node.parent_id is not None else None
    path.reverse()
    return path


def sibling_ids(conversation: Conversation, path: list[Message]) -> dict[int, list[int]]:
    """For each message of `path`, the ids of it and its siblings, oldest first: one query, whatever
    the number of branches (the children of the path's messages, and the roots)."""
    if not path:
        return {}
    by_parent: dict[int | None, list[int]] = {}
    ids = [m.pk for m in path]
    rows = Message.objects.filter(conversation_id=conversation.pk).filter(
        Q(parent_id__isnull=True) | Q(parent_id__in=ids[:-1])
    )
    for sid, parent in rows.order_by("id").values_list("id", "parent_id"):
        by_parent.setdefault(parent, []).append(sid)
    return {m.pk: by_parent.get(m.parent_id, [m.pk]) for m in path}


@dataclass(frozen=True)
class PathMessage:
    """A message of the active path as the `path` frame carries it."""

    message: Message
    siblings: list[int]

    def as_event(self) -> dict[str, object]:
        return {**self.message.as_event(), "status": self.message.status, "siblings": self.siblings}


def active_path(
    conversation: Conversation,
    *,
    leaf_id: int | None = None,
    fields: tuple[str, ...] = PAGE_FIELDS,
    summaries: bool = False,
    files: bool = False,
) -> list[PathMessage]:
    """The active path (or the path to `leaf_id`) with each message's versions (and, with `summaries`,
    the summary through each; with `files`, each message's files as `files`): two queries, however many
    branches there are (three with files)."""
    path = path_messages(conversation, leaf_id=leaf_id, fields=fields, summaries=summaries)
    siblings = sibling_ids(conversation, path)
    if files:
        found = attachments_by_message(path)
        for m in path:
            m.files = found.get(m.pk, [])  # type: ignore[attr-defined]
    return [PathMessage(m, siblings[m.pk]) for m in path]


def summary_for_path(conversation_id: uuid.UUID, ids: list[int]) -> Summary | None:
    """The summary reaching furthest along this path (its `through` on the path), or None."""
    position = {pk: i for i, pk in enumerate(ids)}
    best: tuple[int, tuple[object, ...]] | None = None
    sql, fields = _summaries_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql, [Summary._meta.get_field("conversation").get_db_prep_value(conversation_id, connection)])
        for row in cursor.fetchall():  # (id, through_id, text)
            at = position.get(row[1])
            if at is not None and (best is None or at > best[0]):
                best = (at, row)
    return from_row(Summary, fields, best[1]) if best else None


@functools.cache
def _summaries_sql() -> tuple[str, list[Any]]:
    """A thread's summaries (id, through, text), plain: the ORM's compile cost more than the query."""
    fields = [Summary._meta.get_field(name) for name in ("id", "through", "text")]
    sql = (
        f"SELECT {', '.join(quoted(Summary, f.name) for f in fields)}"  # noqa: S608 - names from the model
        f" FROM {connection.ops.quote_name(Summary._meta.db_table)} WHERE {quoted(Summary, 'conversation')} = %s"
    )
    return sql, fields


@dataclass
class PathHistory:
    """The path a request is built from: its ids (root first), and the summary it may use."""

    conversation_id: uuid.UUID
    ids: list[int]
    summary: Summary | None
    # Whether a stop was stored for the leaf the path was read from (read with the path, for a reply
    # whose request is built from the path above it).
    leaf_stop_requested: bool = False

    @property
    def summary_text(self) -> str:
        return self.summary.text if self.summary else ""

    def unsummarized(self) -> list[int]:
        """The ids after the summary's `through`."""
        if self.summary is None:
            return self.ids
        return self.ids[self.ids.index(self.summary.through_id) + 1 :]


def path_history(conversation: Conversation, *, leaf_id: int | None = None, include_leaf: bool = True) -> PathHistory:
    """The path from the root to `leaf_id` (default: the active leaf), without the leaf itself when
    `include_leaf` is false, with the summary it may use: one query."""
    leaf = conversation.active_leaf_id if leaf_id is None else leaf_id
    if leaf is None:
        return PathHistory(conversation.pk, [], None)
    sql, fields = _path_summaries_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql, [leaf, _db_id(conversation.pk)])
        rows = cursor.fetchall()  # (id, its summary's id, that summary's text, the leaf's stop flag), root first
    stop = bool(rows[-1][3]) if rows else False
    if not include_leaf:
        rows = rows[:-1]
    # The summary reaching furthest along the path, as `summary_for_path` chooses.
    best = next((row for row in reversed(rows) if row[1] is not None), None)
    summary = from_row(Summary, fields, (best[1], best[0], best[2])) if best else None
    return PathHistory(conversation.pk, [row[0] for row in rows], summary, leaf_stop_requested=stop)


@functools.cache
def _path_summaries_sql() -> tuple[str, list[Any]]:
    """`path_history`'s query: the path's ids, each with the summary through it (a summary's `through`
    is one message, so at most one each), and on the leaf's row its stop flag. Params: the leaf, the
    thread's id as stored."""
    s = Summary
    fields = [s._meta.get_field(name) for name in ("id", "through", "text")]
    stop = f"(SELECT m.{quoted(Message, 'stop_requested')} FROM {_TABLE} m WHERE m.id = p.id)"
    sql = (
        f"{_PATH_CTE} SELECT p.id, s.{quoted(s, 'pk')}, s.{quoted(s, 'text')},"  # noqa: S608
        f" CASE WHEN p.depth = 0 THEN {stop} END FROM path p"
        f" LEFT JOIN {connection.ops.quote_name(s._meta.db_table)} s ON s.{quoted(s, 'through')} = p.id"
        " ORDER BY p.depth DESC"
    )
    return sql, fields


def _rows(ids: list[int]) -> list[Message]:
    """The messages `ids` that are not streaming, in that order, each knowing whether it has files
    (`has_files`): `attachment_refs` then reads files only when some have them."""
    if not ids:
        return []
    rows = Message.objects.raw(_rows_sql(len(ids)), ids)
    by_id = {m.pk: m for m in rows}
    return [by_id[i] for i in ids if i in by_id]


@functools.lru_cache(maxsize=64)
def _rows_sql(n: int) -> str:
    """`_rows`' query for `n` ids. Plain SQL: through the ORM, the `EXISTS` of files cost more to
    compile than the query took to run, on every request built (docs/performance.md)."""
    m, a, qn = Message, Attachment, connection.ops.quote_name
    columns = ", ".join(f"m.{quoted(m, name)}" for name in ("pk", "role", "content", "output_tokens"))
    has_files = f"EXISTS (SELECT 1 FROM {qn(a._meta.db_table)} a WHERE a.{quoted(a, 'message')} = m.{quoted(m, 'pk')})"
    return (
        f"SELECT {columns}, {has_files} AS has_files FROM {qn(m._meta.db_table)} m"  # noqa: S608 - names from the models
        f" WHERE m.{quoted(m, 'pk')} IN ({', '.join(['%s'] * n)})"
        f" AND m.{quoted(m, 'status')} <> '{Message.Status.STREAMING}'"
    )


def _turn(m: Message, files: tuple[AttachmentRef, ...] = (), provider: str = "") -> Turn | None:
    if not m.content.strip() and not files:
        return None  # a reply that failed before its first token says nothing
    tokens = m.output_tokens if m.role == Message.Role.ASSISTANT else None
    return Turn(id=m.pk, role=m.role, content=m.content, tokens=tokens, attachments=files, provider=provider)


def attachment_refs(messages: list[Message]) -> dict[int, tuple[AttachmentRef, ...]]:
    """The files of these messages' user turns, by message id: one query."""
    return {k: tuple(a.as_ref() for a in v) for k, v in attachments_by_message(messages).items()}


def attachments_by_message(messages: list[Message]) -> dict[int, list[Attachment]]:
    """The files of these messages, by message id, in the order they were attached: one query."""
    found: dict[int, list[Attachment]] = {}
    # Messages read by `_rows` say whether they have files; others may.
    ids = [m.pk for m in messages if m.role == Message.Role.USER and getattr(m, "has_files", True)]
    if ids:
        for a in Attachment.objects.filter(message_id__in=ids).order_by("position", "created_at", "id"):
            found.setdefault(a.message_id or 0, []).append(a)
    return found


def history_turns(history: PathHistory, *, provider: str = "") -> list[Turn]:
    """The path's turns after its summary, as request history."""
    messages = _rows(history.unsummarized())
    files = attachment_refs(messages)
    return [t for m in messages if (t := _turn(m, files.get(m.pk, ()), provider)) is not None]


RECENT_PAGE = 50


def recent_turns(history: PathHistory, *, tokens: int, at_least: int = 1, provider: str = "") -> list[Turn]:
    """The newest of `history_turns`, oldest first: enough to cost more than `tokens` (and at least
    `at_least` turns), or all of them. Read newest first a page at a time, so a request for a thread
    of thousands of messages reads about as many rows as its budget holds, not the whole thread.
    """
    turns: list[Turn] = []
    total = 0
    remaining = history.unsummarized()
    while remaining:
        page, remaining = remaining[-RECENT_PAGE:], remaining[:-RECENT_PAGE]
        rows = _rows(page)
        files = attachment_refs(rows)
        for m in reversed(rows):
            turn = _turn(m, files.get(m.pk, ()), provider)
            if turn is not None:
                turns.append(turn)
                total += turn.cost()
        if total > tokens and len(turns) >= at_least:
            break
    turns.reverse()
    return turns


# -- the sidebar: threads newest first, grouped by day, a page at a time, searchable -----------------
SIDEBAR_PAGE_SIZE = 50
SNIPPET_CHARS = 160
# What PostgreSQL's ts_headline puts around a match; turned into <mark> by the template tag.
MARK_START, MARK_END = "\x02", "\x03"


@dataclass(frozen=True)
class SidebarPage:
    """One page of the sidebar: rows of (group label or None when the group continues, thread)."""

    rows: list[tuple[str | None, Conversation]]
    next_cursor: str | None
    last_group: str | None


def search_terms(query: str) -> list[str]:
    """The words of a search, at most eight."""
    return re.findall(r"\w+", query)[:8]


def _around_match(needle: str) -> Substr:
    """The text around the first case-insensitive occurrence of `needle` (or the start)."""
    at = StrIndex(Lower("content"), Value(needle.lower()))
    return Substr("content", Greatest(at - Value(SNIPPET_CHARS // 3), Value(1)), SNIPPET_CHARS)


def _search(qs: QuerySet[Conversation], query: str) -> QuerySet[Conversation]:
    """Threads whose title or visible messages match; each annotated with a `snippet` of the first match.

    PostgreSQL: full-text search ('simple' configuration, every word a prefix, so "bana" finds
    "bananas" and nothing depends on a language), or the text as typed anywhere (the full-text
    parser drops things that look like HTML tags, and people search for those too).
    Elsewhere (SQLite): a case-insensitive contains search.
    """
    needle = query.strip()
    if not needle:
        return qs.none()
    messages = Message.objects.filter(conversation=OuterRef("pk"))
    if connection.vendor == "postgresql" and search_terms(query):
        tsquery = SearchQuery(" & ".join(f"'{t}':*" for t in search_terms(query)), search_type="raw", config="simple")
        matching = messages.annotate(doc=SearchVector("content", config="simple")).filter(
            Q(doc=tsquery) | Q(content__icontains=needle)
        )
        headline = SearchHeadline(
            "content",
            tsquery,
            config="simple",
            start_sel=MARK_START,
            stop_sel=MARK_END,
            max_words=24,
            min_words=8,
            short_word="2",
        )
        snippet = Case(
            When(content__icontains=needle, then=_around_match(needle)), default=headline, output_field=TextField()
        )
        return (
            qs.annotate(title_doc=SearchVector("title", config="simple"))
            .filter(Q(title_doc=tsquery) | Q(title__icontains=needle) | Exists(matching))
            .annotate(snippet=Subquery(matching.order_by("id").annotate(s=snippet).values("s")[:1]))
            .annotate(hit=Subquery(matching.order_by("id").values("id")[:1]))
        )
    containing = messages.filter(content__icontains=needle)
    # Only the text around the match leaves the database.
    return qs.filter(Q(title__icontains=needle) | Exists(containing)).annotate(
        snippet=Subquery(containing.order_by("id").annotate(s=_around_match(needle)).values("s")[:1]),
        # The first matching message, on whichever branch: the link opens the path through it.
        hit=Subquery(containing.order_by("id").values("id")[:1]),
    )


def _cursor_of(c: Conversation) -> str:
    return f"{int(c.pinned)}~{c.updated_at.isoformat()}~{c.pk}"


def _after_cursor(qs: QuerySet[Conversation], cursor: str) -> QuerySet[Conversation]:
    """Keyset pagination on (pinned, updated_at, id), all descending: stable while threads are added."""
    try:
        pinned_s, at_s, id_s = cursor.split("~")
        pinned, at, pk = pinned_s == "1", dt.datetime.fromisoformat(at_s), uuid.UUID(id_s)
    except ValueError:
        return qs
    return qs.filter(
        Q(pinned__lt=pinned) | Q(pinned=pinned, updated_at__lt=at) | Q(pinned=pinned, updated_at=at, id__lt=pk)
    )


def day_group(conversation: Conversation, today: dt.date, tz: dt.tzinfo) -> str:
    """The sidebar heading a thread falls under, by its last activity in the person's time zone."""
    if conversation.pinned:
        return "Pinned"
    day = conversation.updated_at.astimezone(tz).date()
    age = (today - day).days
    if age <= 0:
        return "Today"
    if age == 1:
        return "Yesterday"
    if age < 7:
        return "Previous 7 days"
    if age < 30:
        return "Previous 30 days"
    return f"{day:%B}" if day.year == today.year else f"{day:%B %Y}"


def sidebar_page(
    user: AbstractBaseUser,
    *,
    query: str = "",
    cursor: str = "",
    after_group: str | None = None,
    now: dt.datetime,
    tz: dt.tzinfo,
    size: int = SIDEBAR_PAGE_SIZE,
) -> SidebarPage:
    """One page of the user's threads (one query, whatever the page size), grouped by day."""
    qs = (
        conversations_for_user(user)
        .select_related(None)
        .only("id", "title", "pinned", "updated_at")
        .order_by("-pinned", "-updated_at", "-id")
    )
    if query.strip():
        qs = _search(qs, query)
    if cursor:
        qs = _after_cursor(qs, cursor)
    threads = list(qs[: size + 1])
    more = len(threads) > size
    threads = threads[:size]
    today = now.astimezone(tz).date()
    rows: list[tuple[str | None, Conversation]] = []
    group = after_group
    for c in threads:
        label = day_group(c, today, tz)
        rows.append((label if label != group else None, c))
        group = label
    return SidebarPage(rows=rows, next_cursor=_cursor_of(threads[-1]) if more else None, last_group=group)
