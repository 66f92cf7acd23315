"""Writes: create conversations, accept messages, open and close replies. Each one transaction."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from . import limits, pricing
from .attachment import model_takes
from .context import attachment_tokens, estimate_tokens
from .llm.base import Usage
from .models import (
    Attachment,
    ChatModel,
    Conversation,
    Message,
    Persona,
    UsageRecord,
    UserQuota,
    from_row,
    insert_rows,
    quoted,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

TITLE_WORDS = 8
# On PostgreSQL a reply's end is one statement (`UsageRecord.close_reply_and_store`); the benchmark's
# `reply-end-statements` variant sets this off (docs/performance.md).
ONE_STATEMENT_END = True
# On PostgreSQL a send's link of its two rows and its thread's update are one statement (`_link_and_update`);
# the benchmark's `send-link-statements` variant sets this off.
ONE_STATEMENT_SEND = True


class ChatError(Exception):
    """A request the site refuses, with the protocol's error code."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def as_event(self) -> dict[str, object]:
        return {"type": "error", "code": self.code, "message": self.message, "retry_after": self.retry_after}


@dataclass(frozen=True)
class Sent:
    """The outcome of a send: the stored user message, and the reply it opened (None on a resend)."""

    message: Message
    reply: Message | None
    # The ids of the message and its siblings (its other versions), oldest first.
    siblings: tuple[int, ...] = ()


# `parent_id` of a send that names none: the new message follows the active leaf.
FOLLOW_LEAF = "leaf"


def conversation_create(*, owner: AbstractBaseUser, persona: Persona) -> Conversation:
    """A new, empty thread."""
    return Conversation.objects.create(owner_id=owner.pk, persona=persona)


# Empty conversations (no message yet: a first message refused, a tab closed before it was sent)
# a user may hold. They are never listed; beyond this many, "new chat" reuses one.
MAX_EMPTY_CONVERSATIONS = 10


@transaction.atomic
def conversation_start(*, owner: AbstractBaseUser, persona: Persona) -> Conversation:
    """The conversation behind "New chat": a new one, or, when the user already holds
    MAX_EMPTY_CONVERSATIONS empty ones, the oldest of those, made new again with this persona.
    So POST /conversations/new/ cannot pile up empty rows, however often it is sent.
    """
    has_messages = Exists(Message.objects.filter(conversation=OuterRef("pk")))
    empty = Conversation.objects.filter(owner_id=owner.pk).exclude(has_messages)
    oldest = list(empty.order_by("created_at", "id").values_list("pk", flat=True)[:MAX_EMPTY_CONVERSATIONS])
    if len(oldest) < MAX_EMPTY_CONVERSATIONS:
        return conversation_create(owner=owner, persona=persona)
    conversation = Conversation.objects.select_for_update().get(pk=oldest[0])
    conversation.persona = persona
    conversation.title, conversation.title_is_auto, conversation.pinned, conversation.model = "", True, False, ""
    conversation.updated_at = timezone.now()
    conversation.save(update_fields=["persona", "title", "title_is_auto", "pinned", "model", "updated_at"])
    return conversation


def _default_persona() -> Persona:
    persona = Persona.objects.filter(is_default=True, is_active=True).first()
    if persona is None:
        persona = Persona.objects.filter(is_active=True).order_by("position", "id").first()
    if persona is None:
        raise ChatError("not_found", "No persona is available. Ask an admin to activate one.")
    return persona


def effective_persona(conversation: Conversation) -> Persona:
    """The persona a new reply uses: the thread's own, or the default once it has been retired."""
    if conversation.persona.is_active:
        return conversation.persona
    return _default_persona()


def _check_persona(conversation: Conversation) -> None:
    """Refuse to continue a thread whose persona staff have since restricted to groups its owner is not in.

    A conversation fetched by `_lock` carries the answer for its own persona (`persona_allowed`).
    """
    persona = effective_persona(conversation)
    allowed = getattr(conversation, "persona_allowed", None)
    if allowed is None or persona.pk != conversation.persona_id:
        allowed = not persona.groups.exists() or persona.groups.filter(user=conversation.owner_id).exists()
    if not allowed:
        raise ChatError("not_found", f"{persona.name} is no longer available to you. Start a new chat.")


def _check_model(conversation: Conversation, chosen: object = None) -> str:
    """The model the next reply uses: `chosen` (from a `send`) if the persona allows a choice, else the
    thread's; ChatError("invalid") when it is not an active model of the registry the owner may use.
    A model not in the registry is accepted only as the persona's own (priced at zero)."""
    persona = effective_persona(conversation)
    if chosen is not None and chosen != "":
        if not isinstance(chosen, str):
            raise ChatError("invalid", "`model` must be a provider:model string.")
        if chosen != pricing.thread_model(conversation, persona):
            if not persona.allow_model_choice:
                raise ChatError("invalid", f"{persona.name} always uses its own model.")
            if not pricing.may_use(conversation.owner_id, chosen, listed_only=True):
                raise ChatError("invalid", f"The model {chosen} is not available to you.")
        spec = chosen
    else:
        spec = pricing.thread_model(conversation, persona)
    # The lock read the answer for the thread's own model, resolved as here: no query for it.
    read_spec, known = getattr(conversation, "model_use", (None, None))
    answer = known if read_spec == spec else pricing.UNREAD
    if not pricing.may_use(conversation.owner_id, spec, listed_only=spec != persona.resolved_model(), known=answer):
        raise ChatError("invalid", f"The model {spec} is not available to you. Pick another model or persona.")
    return spec


def clean_content(content: object) -> str:
    """The message text, or ChatError("invalid") for empty, non-text or over-long input."""
    if not isinstance(content, str) or not content.strip():
        raise ChatError("invalid", "Type a message first.")
    if "\x00" in content:
        raise ChatError("invalid", "The message contains a NUL character.")
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(content) > limit:
        raise ChatError("invalid", f"That message is {len(content):,} characters; the limit is {limit:,}.")
    return content


def _check_limits(user_id: int, quota: int | None = None) -> None:
    refusal = limits.check_quota(user_id, quota) or limits.check_rate(user_id)
    if refusal:
        raise ChatError(refusal.code, refusal.message, refusal.retry_after)


BUSY = "A reply is still being written. Stop it or wait for it to finish."


def _open_reply(conversation: Conversation, model: str, *, parent_id: int) -> Message:
    """Insert the streaming reply row (the caller checked for one); the partial unique index turns
    a race into `busy`."""
    try:
        with transaction.atomic():
            return Message.objects.create(
                conversation=conversation,
                parent_id=parent_id,
                role=Message.Role.ASSISTANT,
                status=Message.Status.STREAMING,
                model=model,
            )
    except IntegrityError as exc:
        raise ChatError("busy", BUSY) from exc


def _lock(conversation: Conversation, client_id: uuid.UUID | None = None) -> Conversation:
    """The conversation row, locked (PostgreSQL; SQLite's IMMEDIATE transactions lock the whole
    database), with its persona, whether its owner may use that persona and the owner's quota
    override: every check of a send in one query. With them (`send_found`): the id of the message
    stored with `client_id` (a resend), whether a reply is streaming, and how many first messages
    the thread has (the versions a new first message joins).

    Plain SQL, the rows made into models as the ORM makes them (`from_db`): the same query through
    the ORM (`select_for_update`, `select_related`, the checks as annotations) cost about 1.5 ms a
    send to compile, and the two EXISTS and a subquery of the checks 4 ms more (docs/performance.md).
    """
    sql, conv_fields, persona_fields = _lock_sql()
    pk = Conversation._meta.pk.get_db_prep_value(conversation.pk, connection)
    with connection.cursor() as cursor:
        sent_id = Message._meta.get_field("client_id").get_db_prep_value(client_id, connection)
        cursor.execute(sql, [settings.CHAT_DEFAULT_MODEL, sent_id, settings.CHAT_DEFAULT_MODEL, pk])
        row = cursor.fetchone()
    if row is None:  # deleted under an open socket
        raise ChatError("not_found", "This conversation was deleted.")
    n, m = len(conv_fields), len(persona_fields)
    conv = from_row(Conversation, conv_fields, row[:n])
    persona = from_row(Persona, persona_fields, row[n : n + m])
    Conversation.persona.field.set_cached_value(conv, persona)
    conv.persona_allowed = bool(row[n + m])  # SQLite's 0/1
    conv.quota_override = row[n + m + 1]
    # The thread's model as the query resolved it, and `may_use`'s answer row for it (None: not listed).
    spec, listed, *use = row[n + m + 2 : n + m + 7]
    conv.model_use = (spec, tuple(use) if listed else None)
    existing, streaming, roots = row[n + m + 7 :]
    conv.send_found = (existing, bool(streaming), roots)
    return conv


@functools.cache
def _lock_sql() -> tuple[str, list[models.Field[Any, Any]], list[models.Field[Any, Any]]]:
    """`_lock`'s query: the thread's columns, its persona's, then (may the owner use the persona, the
    owner's quota override, the thread's model, whether it is listed, `may_use`'s three columns for it,
    then the three of `send_found`); and the fields of each model's columns, in order. Params: the
    default model, the client id, the default model, the thread's id."""
    qn = connection.ops.quote_name
    conv_fields = list(Conversation._meta.concrete_fields)
    persona_fields = list(Persona._meta.concrete_fields)
    groups = qn(Persona.groups.through._meta.db_table)
    user_groups = qn(get_user_model().groups.through._meta.db_table)
    c, p = Conversation, Persona
    persona_of, owner_of = f"c.{quoted(c, 'persona')}", f"c.{quoted(c, 'owner')}"
    allowed = (
        f"NOT EXISTS (SELECT 1 FROM {groups} pg WHERE pg.persona_id = {persona_of})"
        f" OR EXISTS (SELECT 1 FROM {groups} pg JOIN {user_groups} ug ON ug.group_id = pg.group_id"
        f" WHERE pg.persona_id = {persona_of} AND ug.user_id = {owner_of})"
    )
    override = f"SELECT q.daily_token_quota FROM {qn(UserQuota._meta.db_table)} q WHERE q.user_id = {owner_of}"
    columns = [f"c.{qn(str(f.column))}" for f in conv_fields] + [f"p.{qn(str(f.column))}" for f in persona_fields]
    # The thread's model as `pricing.thread_model` resolves it (params: the default model, twice), and
    # whether the owner may use it, as `pricing.may_use` answers: `_check_model` then needs no query.
    spec = (
        f"CASE WHEN c.{quoted(c, 'model')} <> '' AND p.{quoted(p, 'allow_model_choice')} THEN c.{quoted(c, 'model')}"
        f" WHEN p.{quoted(p, 'model')} <> '' THEN p.{quoted(p, 'model')} ELSE %s END"
    )
    use = pricing.may_use_columns(owner_of)
    # What a send looks for among the thread's messages (param: the client id), each by an index.
    x = Message
    of_thread = f"FROM {qn(x._meta.db_table)} x WHERE x.{quoted(x, 'conversation')} = c.{quoted(c, 'pk')}"
    found = (
        f"(SELECT MIN(x.{quoted(x, 'pk')}) {of_thread} AND x.{quoted(x, 'client_id')} = %s),"
        f" EXISTS (SELECT 1 {of_thread} AND x.{quoted(x, 'status')} = '{x.Status.STREAMING}'),"
        f" (SELECT COUNT(*) {of_thread} AND x.{quoted(x, 'parent')} IS NULL)"
    )
    sql = (
        f"SELECT {', '.join(columns)}, ({allowed}), ({override}), {spec}, m.{quoted(ChatModel, 'pk')} IS NOT NULL,"  # noqa: S608 - names from the models, no values
        f" {use}, {found} FROM {qn(c._meta.db_table)} c"
        f" JOIN {qn(p._meta.db_table)} p ON p.{quoted(p, 'pk')} = {persona_of}"
        f" LEFT JOIN {qn(ChatModel._meta.db_table)} m ON m.{quoted(ChatModel, 'name')} = ({spec})"
        f" WHERE c.{quoted(c, 'pk')} = %s"
    )
    if connection.features.has_select_for_update_of:
        sql += " FOR UPDATE OF c"
    return sql, conv_fields, persona_fields


def _quota(conversation: Conversation) -> int:
    override = getattr(conversation, "quota_override", None)
    return override if override is not None else settings.CHAT_DAILY_TOKEN_QUOTA


def clean_attachment_ids(value: object) -> list[uuid.UUID]:
    """The `attachments` of a send: distinct attachment ids, at most CHAT_MAX_ATTACHMENTS; else `invalid`."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ChatError("invalid", "`attachments` must be a list of attachment ids.")
    limit = settings.CHAT_MAX_ATTACHMENTS
    if len(value) > limit:
        raise ChatError("invalid", f"At most {limit} files can go with one message.")
    try:
        ids = [uuid.UUID(v) for v in value]
    except ValueError:
        raise ChatError("invalid", "`attachments` must be a list of attachment ids.") from None
    if len(set(ids)) != len(ids):
        raise ChatError("invalid", "The same file is attached twice.")
    return ids


KIND_NAMES = {"image": "images", "pdf": "PDFs", "text": "text files"}


def _check_attachments(
    conv: Conversation, ids: list[uuid.UUID], text: str, model: str, parent: int | None
) -> list[Attachment]:
    """The files a message to `parent` may carry, locked, that the model takes and that fit its budget:
    the user's unsent uploads to this thread, and the files sent with another version of this message
    (a user message with the same parent: an edit keeps the files of the message it edits)."""
    if not ids:
        return []
    versions = Q(message__role=Message.Role.USER) & (
        Q(message__parent__isnull=True) if parent is None else Q(message__parent_id=parent)
    )
    files = list(
        Attachment.objects.select_for_update(of=("self",))
        .filter(Q(message__isnull=True) | versions, pk__in=ids, owner_id=conv.owner_id, conversation=conv)
        .order_by("created_at", "id")
    )
    if len(files) != len(ids):
        raise ChatError(
            "invalid",
            "An attached file was not found: it was removed, sent with another message, or is not yours.",
        )
    taken = model_takes(model).kinds
    for f in files:
        if f.kind not in taken:
            raise ChatError("invalid", f"{model} does not take {KIND_NAMES[f.kind]}: {f.name} cannot be sent to it.")
    provider = model.partition(":")[0]
    tokens = estimate_tokens(text) + sum(attachment_tokens(f.as_ref(), provider) for f in files)
    budget = effective_persona(conv).budget_tokens()
    if tokens > budget:
        raise ChatError(
            "invalid",
            f"With its files this message is about {tokens:,} tokens; this chat's budget is {budget:,}. "
            "Attach fewer or smaller files.",
        )
    # Sorted as the user attached them.
    order = {pk: i for i, pk in enumerate(ids)}
    return sorted(files, key=lambda f: order[f.pk])


def _bind_files(files: list[Attachment], message: Message) -> list[Attachment]:
    """Bind `files` to `message` in their order (the send's: the page, the exports and the request follow
    it). An upload is bound itself; a file sent with another version of the message is copied: a new row
    for the same stored bytes, which stay until no row refers to them (attachment.py)."""
    uploads: list[Attachment] = []
    copies: list[Attachment] = []
    bound: list[Attachment] = []
    for position, f in enumerate(files):
        row = f if f.message_id is None else f.copied()
        (uploads if row is f else copies).append(row)
        row.message, row.position = message, position
        bound.append(row)
    if uploads:
        Attachment.objects.bulk_update(uploads, ["message", "position"])
    if copies:
        Attachment.objects.bulk_create(copies)
    return bound


def _point_path_to(conv: Conversation, leaf_id: int) -> None:
    """Make the path from the root to `leaf_id` the active one: every message on it points at its
    child on it (what switching back to it continues to), and the conversation at the leaf."""
    from .selectors import path_messages

    path = path_messages(conv, leaf_id=leaf_id, fields=("id", "active_child_id"))
    for above, below in zip(path, path[1:], strict=False):
        if above.active_child_id != below.pk:
            Message.objects.filter(pk=above.pk).update(active_child_id=below.pk)
    conv.active_leaf_id = leaf_id
    Conversation.objects.filter(pk=conv.pk).update(active_leaf_id=leaf_id)


def _children(conv: Conversation, parent_id: int | None) -> tuple[int, ...]:
    return tuple(
        Message.objects.filter(conversation=conv, parent_id=parent_id).order_by("id").values_list("id", flat=True)
    )


def _parent_for_send(conv: Conversation, parent_id: int | None | str, edit_of: int | None) -> int | None:
    """The parent the new user message gets: a reply of this conversation, or None for a first message."""
    if edit_of is not None:
        edited = Message.objects.filter(conversation=conv, pk=edit_of, role=Message.Role.USER).first()
        if edited is None:
            raise ChatError("invalid", "`edit_of` must be one of your messages in this conversation.")
        return edited.parent_id
    if parent_id == FOLLOW_LEAF:
        return conv.active_leaf_id
    if parent_id is None:
        return None
    if not Message.objects.filter(conversation=conv, pk=parent_id, role=Message.Role.ASSISTANT).exists():
        raise ChatError("invalid", "`parent_id` must be a reply in this conversation, or null.")
    return int(parent_id)


def _link(message_id: int, reply_id: int, parent_id: int | None) -> tuple[str, list[int]]:
    """The UPDATE (SQL, parameters) that points a send's new reply at its new message, the message at
    the reply, and (`parent_id`, when the message continues the active path) the parent at the message.
    One INSERT cannot link its own rows. Plain SQL: the ORM's `Case`/`When` form cost 2 ms a send to compile."""
    parent, child, pk = quoted(Message, "parent"), quoted(Message, "active_child"), quoted(Message, "pk")
    children = f"WHEN {pk} = %s THEN %s " * (2 if parent_id is not None else 1)
    ids = [message_id, reply_id] + ([parent_id] if parent_id is not None else [])
    params: list[int] = [reply_id, message_id, message_id, reply_id]
    if parent_id is not None:
        params += [parent_id, message_id]
    sql = (
        f"UPDATE {connection.ops.quote_name(Message._meta.db_table)}"  # noqa: S608 - names from the model
        f" SET {parent} = CASE WHEN {pk} = %s THEN %s ELSE {parent} END,"
        f" {child} = CASE {children}ELSE {child} END WHERE {pk} IN ({', '.join(['%s'] * len(ids))})"
    )
    return sql, params + ids


def _update_columns(row: models.Model, names: list[str]) -> tuple[str, list[Any]]:
    """The UPDATE (SQL, parameters) of `row.save(update_fields=names)` for fields without `auto_now`, in
    plain SQL: the ORM's UPDATE cost about 1 ms a send to compile. No signals are sent (nothing listens
    for these rows')."""
    meta = type(row)._meta
    fields = [meta.get_field(name) for name in names]
    if any(getattr(f, "auto_now", False) for f in fields):
        raise ValueError("An auto_now field is set by save(), not by _update_columns.")
    sql = (
        f"UPDATE {connection.ops.quote_name(meta.db_table)}"  # noqa: S608 - names from the model
        f" SET {', '.join(f'{quoted(type(row), name)} = %s' for name in names)} WHERE {quoted(type(row), 'pk')} = %s"
    )
    params = [f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields]  # type: ignore[union-attr]
    return sql, [*params, meta.pk.get_db_prep_value(row.pk, connection)]


def _execute(*statements: tuple[str, list[Any]]) -> None:
    """Run each (SQL, parameters) in turn."""
    with connection.cursor() as cursor:
        for sql, params in statements:
            cursor.execute(sql, params)


def _link_and_update(link: tuple[str, list[int]] | None, update: tuple[str, list[Any]]) -> None:
    """A send's link of its rows (None: already run), then its thread's update: one statement on
    PostgreSQL, whose data-modifying `WITH` runs to completion though nothing reads it (the two touch
    different tables), one round trip fewer; two statements elsewhere (SQLite has no UPDATE inside `WITH`)."""
    if link is None:
        _execute(update)
    elif ONE_STATEMENT_SEND and connection.vendor == "postgresql":
        _execute((f"WITH linked AS ({link[0]}) {update[0]}", link[1] + update[1]))
    else:
        _execute(link, update)


def _sent_before(conversation: Conversation, message: Message) -> Sent:
    """A resend's answer: the message stored with its `client_id` before, and no new reply."""
    message.files = list(message.attachments.all())  # type: ignore[attr-defined]
    return Sent(message, None, _children(conversation, message.parent_id))


def message_send(
    *,
    conversation: Conversation,
    client_id: uuid.UUID,
    content: object,
    parent_id: int | None | str = FOLLOW_LEAF,
    edit_of: int | None = None,
    model: object = None,
    attachments: object = None,
) -> Sent:
    """Store the user's message and open the reply; a resent `client_id` changes nothing.

    The message becomes a child of `parent_id` (a reply, or None for a new first message), by default
    of the active leaf. `edit_of` (any user message's id) stores a new version of that message: a
    sibling of it. Nothing is hidden or deleted: the old version stays, one switch away.
    `model` (`provider:model`), where the persona allows a choice, becomes the thread's model.
    `attachments`: ids of the user's unsent uploads to this thread, bound to the message.
    Refusals (`invalid`, `busy`, `rate_limited`, `quota_exceeded`) store nothing.
    """
    ids = clean_attachment_ids(attachments)
    text = "" if ids and isinstance(content, str) and not content.strip() else clean_content(content)
    try:
        with transaction.atomic():
            # The resend, the reply in progress and the count of first messages come with the lock.
            conv = _lock(conversation, client_id)
            existing_id, streaming, root_count = conv.send_found  # type: ignore[attr-defined]
            if existing_id is not None:
                return _sent_before(conv, Message.objects.get(pk=existing_id))
            if streaming:
                raise ChatError("busy", BUSY)
            parent = _parent_for_send(conv, parent_id, edit_of)
            # A new first message joins the first messages as their version (read only if any).
            roots = _children(conv, None) if parent is None and root_count else ()
            _check_persona(conv)
            spec = _check_model(conv, model)
            files = _check_attachments(conv, ids, text, spec, parent)
            _check_limits(conv.owner_id, _quota(conv))
            follows_leaf = parent is not None and parent == conv.active_leaf_id
            # The message and its reply in one INSERT; the partial unique index turns a race into `busy`.
            message = Message(
                conversation=conv, parent_id=parent, role=Message.Role.USER, content=text, client_id=client_id
            )
            reply = Message(conversation=conv, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING, model=spec)
            insert_rows([message, reply])
            # One INSERT cannot point the reply at a row of the same INSERT: link them, and in the common
            # case (the new message continues the active path) its parent to it, in one UPDATE, which
            # goes with the thread's (below) on PostgreSQL.
            reply.parent_id = message.pk
            message.active_child_id = reply.pk
            continues = follows_leaf and parent is not None
            link = _link(message.pk, reply.pk, parent if continues else None)
            fields = ["updated_at"]
            ends_at_reply = continues or parent is None
            if ends_at_reply:
                # The path ends at the new reply: after the active leaf, or from a new first message
                # (the two rows, linked with the thread's update below, are the whole path).
                conv.active_leaf_id = reply.pk
                fields.append("active_leaf")
                siblings: tuple[int, ...] = (message.pk,) if continues else (*roots, message.pk)
            else:
                _execute(link)  # the path to point at the new reply runs through the linked rows
                _point_path_to(conv, reply.pk)
                siblings = _children(conv, parent)
            if files:
                files = _bind_files(files, message)
            message.files = files  # type: ignore[attr-defined]
            if spec != conv.model and effective_persona(conv).allow_model_choice:
                conv.model = spec  # the choice sticks to the thread
                fields.append("model")
            conv.updated_at = timezone.now()
            if not conv.title:
                conv.title = " ".join(text.split()[:TITLE_WORDS])[:200] or ", ".join(f.name for f in files)[:200]
                fields.append("title")
            _link_and_update(link if ends_at_reply else None, _update_columns(conv, fields))
    except IntegrityError:
        # Another send won a race: the same client_id (a resend) or a reply opened meanwhile.
        raced = Message.objects.filter(conversation=conversation, client_id=client_id).first()
        if raced:
            return _sent_before(conversation, raced)
        raise ChatError("busy", BUSY) from None
    return Sent(message, reply, siblings)


def reply_regenerate(*, conversation: Conversation, message_id: int | None = None) -> tuple[Message, tuple[int, ...]]:
    """A new version of reply `message_id` (default: the active leaf's reply), a sibling of it, made
    the active path. Returns (the new reply, the ids of it and its siblings)."""
    with transaction.atomic():
        conv = _lock(conversation)
        asked: int | None
        if message_id is not None:
            old = Message.objects.filter(conversation=conv, pk=message_id, role=Message.Role.ASSISTANT).first()
            if old is None or old.parent_id is None:
                raise ChatError("invalid", "`message_id` must be a reply in this conversation.")
            asked = old.parent_id
        else:
            leaf = (
                Message.objects.filter(pk=conv.active_leaf_id).only("id", "role", "parent_id").first()
                if conv.active_leaf_id is not None
                else None
            )
            if leaf is None:
                raise ChatError("invalid", "There is no message to answer yet.")
            asked = leaf.pk if leaf.role == Message.Role.USER else leaf.parent_id
            if asked is None:
                raise ChatError("invalid", "There is no message to answer yet.")
        # Busy before the limits: a refused regenerate must not count against the user's rate.
        if Message.objects.filter(conversation=conv, status=Message.Status.STREAMING).exists():
            raise ChatError("busy", BUSY)
        _check_persona(conv)
        spec = _check_model(conv)
        _check_limits(conv.owner_id, _quota(conv))
        reply = _open_reply(conv, spec, parent_id=asked)
        _point_path_to(conv, reply.pk)
        siblings = _children(conv, asked)
    return reply, siblings


def conversation_switch(*, conversation: Conversation, message_id: object) -> int:
    """Make the path through message `message_id` active, continuing to its most recently active
    descendant. Returns the new active leaf's id. Works while a reply streams on any branch."""
    from .selectors import descend

    if not isinstance(message_id, int) or isinstance(message_id, bool):
        raise ChatError("invalid", "`switch` needs an integer `message_id`.")
    with transaction.atomic():
        conv = Conversation.objects.select_for_update(of=("self",)).get(pk=conversation.pk)
        if not Message.objects.filter(conversation=conv, pk=message_id).exists():
            raise ChatError("not_found", "No such message in this conversation.")
        leaf = descend(conv.pk, message_id)
        _point_path_to(conv, leaf)
    conversation.active_leaf_id = leaf
    return leaf


def reply_stop_request(*, conversation_id: uuid.UUID) -> int | None:
    """Ask the conversation's running reply to stop, durably: its own process reads the flag. The reply's
    id, or None when no reply is running."""
    reply_id = (
        Message.objects.filter(conversation_id=conversation_id, status=Message.Status.STREAMING)
        .values_list("pk", flat=True)
        .first()
    )
    if reply_id is None:
        return None
    if not Message.objects.filter(pk=reply_id, status=Message.Status.STREAMING).update(stop_requested=True):
        return None  # it ended meanwhile
    return reply_id


def reply_finish(
    *,
    reply_id: int,
    owner_id: int | None = None,
    content: str,
    status: str,
    input_tokens: int | None,
    output_tokens: int | None,
    cached_input_tokens: int | None = None,
    cache_write_tokens: int | None = None,
    estimated_input_tokens: int = 0,
    estimated_output_tokens: int = 0,
    error_code: str = "",
    quota_tokens: int = 0,
    model: str | None = None,
    conversation_id: uuid.UUID | None = None,
) -> Message | None:
    """Close a streaming reply with its whole text, usage and cost; None if something else closed it first.

    The cost is priced from the registry now (a later price change does not rewrite it); estimates
    stand in for counts the provider did not report (a stopped reply, say), in usage and quota alike.
    `model` and `conversation_id` (the reply's, which its generation knows) save a read of its row.

    One UPDATE closes the row only while it is still `streaming` (so two closers cannot both record
    it), and the usage record takes the thread's owner and persona in its INSERT: three statements in
    the transaction, the price read before it; reading the row, locked, and saving it through the ORM
    were five (docs/performance.md). On PostgreSQL the three are one statement, with no transaction
    around it (`UsageRecord.close_reply_and_store`).
    """
    if model is None or conversation_id is None:
        known = Message.objects.filter(pk=reply_id).values_list("model", "conversation_id").first()
        if known is None:
            return None
        model, conversation_id = known
    counted = Usage(
        input_tokens if input_tokens is not None else estimated_input_tokens,
        output_tokens if output_tokens is not None else estimated_output_tokens,
        cached_input_tokens,
        cache_write_tokens,
    )
    # Priced before the transaction: on SQLite it holds the database's one write lock.
    cost = pricing.cost_of(model, counted)
    closed = Message(
        pk=reply_id,
        conversation_id=conversation_id,
        model=model,
        content=content,
        status=status,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached_input_tokens,
        cache_write_tokens=cache_write_tokens,
        cost=cost,
        error_code=error_code,
        updated_at=timezone.now(),
    )
    sql, fields = _close_reply_sql()
    params = [f.get_db_prep_save(getattr(closed, f.attname), connection) for f in fields]
    numbers = {
        "message_id": reply_id,
        "model": model,
        "kind": UsageRecord.Kind.REPLY,
        "input_tokens": counted.input_tokens or 0,
        "cached_input_tokens": counted.cached_input_tokens or 0,
        "cache_write_tokens": counted.cache_write_tokens or 0,
        "output_tokens": counted.output_tokens or 0,
        "estimated": input_tokens is None or output_tokens is None,
        "cost": cost,
    }
    if ONE_STATEMENT_END and connection.vendor == "postgresql":
        if not UsageRecord.close_reply_and_store(
            sql, [*params, reply_id, Message.Status.STREAMING], conversation_id, **numbers
        ):
            return None
    else:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(sql, [*params, reply_id, Message.Status.STREAMING])
                if not cursor.rowcount:
                    return None
            UsageRecord.store_for_conversation(conversation_id, **numbers)
    if owner_id is None:
        owner_id = Conversation.objects.filter(pk=conversation_id).values_list("owner_id", flat=True).first()
    if owner_id is not None:
        limits.record_usage(owner_id, quota_tokens or counted_total(counted))
    return closed


@functools.cache
def _close_reply_sql() -> tuple[str, list[models.Field[Any, Any]]]:
    """`reply_finish`'s conditional UPDATE in plain SQL, and the fields it sets (then the id and the
    status it must still have): the ORM's compile of it was about a quarter of a reply's end in a
    profile (docs/performance.md)."""
    names = ("content", "status", "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens",
             "cost", "error_code", "updated_at")  # fmt: skip
    fields: list[models.Field[Any, Any]] = [Message._meta.get_field(name) for name in names]  # type: ignore[misc]
    sql = (
        f"UPDATE {connection.ops.quote_name(Message._meta.db_table)}"  # noqa: S608 - names from the model
        f" SET {', '.join(f'{quoted(Message, name)} = %s' for name in names)}"
        f" WHERE {quoted(Message, 'pk')} = %s AND {quoted(Message, 'status')} = %s"
    )
    return sql, fields


def counted_total(usage: Usage) -> int:
    """Input + output tokens: what a call costs against the daily quota."""
    return (usage.input_tokens or 0) + (usage.output_tokens or 0)


def _record(
    conversation: Conversation,
    model: str,
    kind: str,
    usage: Usage,
    cost: Decimal,
    *,
    message: Message | None = None,
    estimated: bool = False,
) -> UsageRecord:
    return UsageRecord.objects.create(
        user_id=conversation.owner_id,
        conversation=conversation,
        persona_id=conversation.persona_id,
        message=message,
        model=model,
        kind=kind,
        input_tokens=usage.input_tokens or 0,
        cached_input_tokens=usage.cached_input_tokens or 0,
        cache_write_tokens=usage.cache_write_tokens or 0,
        output_tokens=usage.output_tokens or 0,
        estimated=estimated,
        cost=cost,
    )


def usage_record_call(
    *, conversation: Conversation, model: str, kind: str, usage: Usage, estimate: tuple[int, int]
) -> UsageRecord:
    """Record a background call (a summary, a title) for the thread's owner: stored, priced, and
    counted against their quota. `estimate`: (input, output) tokens where the provider said nothing."""
    counted = Usage(
        usage.input_tokens if usage.input_tokens is not None else estimate[0],
        usage.output_tokens if usage.output_tokens is not None else estimate[1],
        usage.cached_input_tokens,
        usage.cache_write_tokens,
    )
    estimated = usage.input_tokens is None or usage.output_tokens is None
    record = _record(conversation, model, kind, counted, pricing.cost_of(model, counted), estimated=estimated)
    limits.record_usage(conversation.owner_id, counted_total(counted))
    return record


def replies_interrupt_stale(
    *, conversation_id: uuid.UUID | None = None, exclude_ids: list[int] | None = None
) -> list[Message]:
    """Mark streaming replies whose process stopped touching them as `interrupted`; returns them.

    `exclude_ids`: the caller's own running replies, alive whatever their row says.
    """
    cutoff = timezone.now() - dt.timedelta(seconds=settings.CHAT_STALE_AFTER)
    stale = Message.objects.filter(status=Message.Status.STREAMING, updated_at__lt=cutoff)
    if exclude_ids:
        stale = stale.exclude(pk__in=exclude_ids)
    if conversation_id is not None:
        stale = stale.filter(conversation_id=conversation_id)
    interrupted = []
    for message in stale:
        if Message.objects.filter(pk=message.pk, status=Message.Status.STREAMING, updated_at__lt=cutoff).update(
            status=Message.Status.INTERRUPTED, updated_at=timezone.now()
        ):
            message.status = Message.Status.INTERRUPTED
            interrupted.append(message)
    return interrupted


def conversation_rename(*, conversation: Conversation, title: object) -> Conversation:
    """Give a thread the title its owner chose; the model's background title never overwrites it."""
    text = " ".join(title.split())[:200] if isinstance(title, str) else ""
    if not text:
        raise ChatError("invalid", "A title cannot be empty.")
    conversation.title = text
    conversation.title_is_auto = False
    conversation.save(update_fields=["title", "title_is_auto"])
    return conversation


def conversation_pin(*, conversation: Conversation, pinned: bool) -> Conversation:
    """Pin a thread to the top of the sidebar, or unpin it."""
    conversation.pinned = pinned
    conversation.save(update_fields=["pinned"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete a thread and its messages, and close its open sockets. A reply still running stops at its
    next write (its row is gone) and sends `end`."""
    from .sockets import conversation_deleted

    conversation_id = conversation.pk
    conversation.delete()
    conversation_deleted(conversation_id)
