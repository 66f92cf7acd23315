"""The conversation page's thread: the path's rows in one query, each message's HTML from the cache
(rendered afresh, from its text, only when not cached), joined with the summary divider."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from django.db import connection
from django.db.models.expressions import RawSQL
from django.template.loader import get_template

from . import rendering
from .models import Attachment, Conversation, Message, Summary
from .selectors import _PATH_CTE, _TABLE, PAGE_FIELDS, _db_id, attachments_by_message

# What a message's HTML on the page depends on besides its text and files, which never change once
# the message has finished (docs/architecture.md, "Loading a path"). Read for every message of the
# path, these key its cached rendering; the text and files are read only for a message rendered afresh.
_COLUMNS = (
    "m.id, m.parent_id, m.role, m.status, m.client_id, m.error_code, m.model, m.input_tokens,"
    " m.cached_input_tokens, m.output_tokens, m.cost,"
    # As text: Django's SQLite adapter would parse every timestamp into a datetime, which costs more
    # than the rest of the row. It tells a message apart from an unrelated one that reused its id.
    " CAST(m.updated_at AS TEXT)"
)
# The other kinds of rows (NULL role): versions (id, parent id), summaries (through id, summary id
# and text), files (the message's id, and 1). Typed: PostgreSQL types a union's columns left to right.
_INT, _TEXT = "CAST(NULL AS INTEGER)", "CAST(NULL AS TEXT)"
_NO_ROW = ", ".join(["NULL"] * 10)
# The fields a message is rendered from when its HTML is not cached.
RENDER_FIELDS = (*PAGE_FIELDS, "model", "input_tokens", "cached_input_tokens", "output_tokens", "cost")


class Row(NamedTuple):
    """A message of the page's path: everything its HTML depends on but its text and files."""

    id: int
    parent_id: int | None
    role: str
    status: str
    client_id: object
    error_code: str
    model: str
    input_tokens: int | None
    cached_input_tokens: int | None
    output_tokens: int | None
    cost: object
    updated_at: str


@dataclass(frozen=True)
class PathSummary:
    """The summary a path uses, shown as a divider after message `through_id`."""

    id: int
    through_id: int
    text: str


@dataclass
class Path:
    """The path the page shows, root first, with each message's versions and the path's summary."""

    rows: list[Row]
    # Sibling ids by parent id (None: the roots), oldest first; a parent with one child may be absent.
    versions: dict[int | None, tuple[int, ...]]
    summary: PathSummary | None
    with_files: set[int]  # the ids of the messages that have files

    def siblings(self) -> list[tuple[int, ...]]:
        """For each row, the ids of its message and of that message's other versions, oldest first."""
        versions = self.versions
        return [versions.get(r[1]) or (r[0],) for r in self.rows]


def _path_rows() -> tuple[str, str]:
    """For this database: the recursive query `path` (with at least its messages' `id`), and the
    SELECT of the path's rows."""
    if connection.vendor == "postgresql":
        # PostgreSQL guesses 101 rows for any recursive query, and for `WHERE id IN (SELECT id FROM
        # path)` hashed the whole message table rather than look the ids up (below some tens of
        # thousands of rows: 2 ms for a 10-message path in a table of 7,000). So the recursive query
        # carries the rows themselves, each step one primary-key lookup: a LATERAL subquery, which
        # OFFSET 0 keeps from being turned into a join (3 ms for 1,000 messages; by `= ANY(ARRAY(…))`,
        # which does use the index, 5 ms).
        cte = (
            f"WITH RECURSIVE path AS (SELECT {_COLUMNS} FROM {_TABLE} m WHERE m.id = %s AND m.conversation_id = %s"
            f" UNION ALL SELECT {_COLUMNS} FROM path p"
            f" CROSS JOIN LATERAL (SELECT * FROM {_TABLE} x WHERE x.id = p.parent_id OFFSET 0) m)"
        )  # noqa: S608
        return cte, f"SELECT *, {_INT}, {_TEXT} FROM path"
    # SQLite: the ids first, then their rows by primary key (faster than carrying the rows along).
    return _PATH_CTE, f"SELECT {_COLUMNS}, {_INT}, {_TEXT} FROM {_TABLE} m WHERE m.id IN (SELECT id FROM path)"  # noqa: S608


def load(conversation: Conversation, *, leaf_id: int | None = None) -> Path:
    """The path from the root to `leaf_id` (default: the active leaf), in one query: its rows (no text),
    the versions of the messages that have several (the children of the path's messages that have a
    sibling, and the roots), the conversation's summaries and which messages have files. Whatever
    the branches, it reads the path's rows and their siblings, and a row per summary or file."""
    leaf = conversation.active_leaf_id if leaf_id is None else leaf_id
    if leaf is None:
        return Path([], {}, None, set())
    conv = _db_id(conversation.pk)
    cte, path_rows = _path_rows()
    sql = (
        f"{cte} {path_rows}"
        # Only the children of path messages with more than one: a message that is its parent's only
        # child, most of a long path, has no version row.
        f" UNION ALL SELECT m.id, m.parent_id, {_NO_ROW}, NULL, NULL FROM {_TABLE} m"
        f" WHERE m.conversation_id = %s AND m.parent_id IN (SELECT c.parent_id FROM {_TABLE} c"
        f" WHERE c.conversation_id = %s AND c.parent_id IN (SELECT id FROM path) GROUP BY c.parent_id"
        f" HAVING COUNT(*) > 1)"
        f" UNION ALL SELECT m.id, m.parent_id, {_NO_ROW}, NULL, NULL FROM {_TABLE} m"
        f" WHERE m.conversation_id = %s AND m.parent_id IS NULL"
        f" UNION ALL SELECT s.through_id, NULL, {_NO_ROW}, s.id, s.text FROM {Summary._meta.db_table} s"
        f" WHERE s.conversation_id = %s"
        f" UNION ALL SELECT a.message_id, NULL, {_NO_ROW}, 1, NULL FROM {Attachment._meta.db_table} a"
        f" WHERE a.conversation_id = %s AND a.message_id IS NOT NULL"
    )  # noqa: S608 - table names from the models, values as parameters
    with connection.cursor() as cursor:
        cursor.execute(sql, [leaf, conv, conv, conv, conv, conv, conv])
        fetched = cursor.fetchall()
    by_id = {r[0]: r for r in fetched if r[2] is not None}
    children: dict[int | None, list[int]] = {}
    summaries: dict[int, tuple] = {}
    with_files = set()
    for r in fetched:
        if r[2] is not None:
            continue
        if r[12] is None:
            children.setdefault(r[1], []).append(r[0])
        elif r[13] is not None:
            summaries[r[0]] = r
        else:
            with_files.add(r[0])
    path = []
    summary = None
    node = by_id.get(leaf)
    while node is not None:  # up from the leaf, by the parent links
        path.append(node)
        if summary is None and node[0] in summaries:  # the first met reaches furthest along the path
            found = summaries[node[0]]
            summary = PathSummary(found[12], found[0], found[13])
        node = by_id.get(node[1])
    path.reverse()
    versions = {parent: tuple(sorted(ids)) for parent, ids in children.items()}
    return Path([Row._make(r[:12]) for r in path], versions, summary, with_files)


def load_one(conversation: Conversation, message_id: int) -> Path | None:
    """One message of the conversation, any version of it, as `load` reads it (no summary): two queries."""
    sql = (
        f"SELECT {_COLUMNS}, EXISTS (SELECT 1 FROM {Attachment._meta.db_table} a WHERE a.message_id = m.id)"
        f" FROM {_TABLE} m WHERE m.id = %s AND m.conversation_id = %s"
    )  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [message_id, _db_id(conversation.pk)])
        found = cursor.fetchone()
    if found is None:
        return None
    row = Row._make(found[:12])
    siblings = conversation.messages.filter(parent_id=row.parent_id).order_by("id").values_list("id", flat=True)
    return Path([row], {row.parent_id: tuple(siblings)}, None, {row.id} if found[12] else set())


# Above this many, the messages to render afresh are read as the whole path (one subquery), not by id.
_BY_ID = 500


def messages(
    conversation: Conversation, rows: list[Row], *, with_files: set[int], leaf_id: int | None = None
) -> dict[int, Message]:
    """The messages of `rows` with their text and files, by id: one query, and one more for the files
    when any of them has some (`with_files`)."""
    if not rows:
        return {}
    qs = Message.objects.filter(conversation_id=conversation.pk).only(*RENDER_FIELDS)
    if len(rows) > _BY_ID and leaf_id is not None:
        qs = qs.filter(pk__in=RawSQL(f"{_PATH_CTE} SELECT id FROM path", (leaf_id, _db_id(conversation.pk))))
    else:
        qs = qs.filter(pk__in=[r.id for r in rows])
    by_id = {m.pk: m for m in qs}
    files = attachments_by_message([by_id[r.id] for r in rows if r.id in with_files and r.id in by_id])
    for m in by_id.values():
        m.files = files.get(m.pk, [])  # type: ignore[attr-defined]
    return by_id


def thread_parts(conversation: Conversation, path: Path, hints: dict[str, str]) -> list[bytes]:
    """The path's messages as the page shows them (UTF-8, one part per message), with the summary
    divider after the message the path's summary runs through."""
    leaf = path.rows[-1].id if path.rows else None
    articles = rendering.render_rows(
        conversation.pk,
        path.rows,
        path.siblings(),
        hints,
        lambda rows: messages(conversation, rows, with_files=path.with_files, leaf_id=leaf),
    )
    if path.summary is not None:
        at = next(i for i, r in enumerate(path.rows) if r.id == path.summary.through_id)
        divider = get_template("conversations/_summary_divider.html").render({"summary": path.summary})
        articles.insert(at + 1, divider.encode())
    return articles
