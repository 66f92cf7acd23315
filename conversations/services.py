"""Writes: create conversations, accept messages, open and close replies. Each one transaction."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from . import limits, llm
from .context import attachment_tokens, estimate_tokens
from .models import Attachment, Conversation, Message, Persona, UserQuota

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

TITLE_WORDS = 8


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
    # Messages an edit took out of sight (the edited message and the replies after it).
    replaces: tuple[int, ...] = ()


def conversation_create(*, owner: AbstractBaseUser, persona: Persona) -> Conversation:
    """A new, empty thread."""
    return Conversation.objects.create(owner=owner, persona=persona)


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


def _open_reply(conversation: Conversation) -> Message:
    """Insert the streaming reply row (the caller checked for one); the partial unique index turns
    a race into `busy`."""
    try:
        with transaction.atomic():
            return Message.objects.create(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                status=Message.Status.STREAMING,
                model=effective_persona(conversation).resolved_model(),
            )
    except IntegrityError as exc:
        raise ChatError("busy", BUSY) from exc


def _lock(conversation: Conversation) -> Conversation:
    """The conversation row, locked (PostgreSQL; SQLite's IMMEDIATE transactions lock the whole
    database), with its persona, whether its owner may use that persona and the owner's quota
    override: every check of a send in two queries."""
    conv = Conversation.objects.select_for_update(of=("self",)).select_related("persona").get(pk=conversation.pk)
    allowed, override = _send_checks(conv.persona_id, conv.owner_id)
    conv.persona_allowed = allowed  # type: ignore[attr-defined]
    conv.quota_override = override  # type: ignore[attr-defined]
    return conv


def _send_checks(persona_id: int, user_id: int) -> tuple[bool, int | None]:
    """(may the user use the persona, the user's quota override) in one round trip.

    Plain SQL: the same question through the ORM (two EXISTS and a subquery) cost 4 ms a send to
    compile, more than everything else a send does (docs/performance.md).
    """
    groups = Persona.groups.through._meta.db_table
    user_groups = get_user_model().groups.through._meta.db_table
    quotas = UserQuota._meta.db_table
    sql = (
        f"SELECT (NOT EXISTS (SELECT 1 FROM {groups} pg WHERE pg.persona_id = %s)"
        f" OR EXISTS (SELECT 1 FROM {groups} pg JOIN {user_groups} ug ON ug.group_id = pg.group_id"
        f" WHERE pg.persona_id = %s AND ug.user_id = %s)),"
        f" (SELECT q.daily_token_quota FROM {quotas} q WHERE q.user_id = %s)"
    )  # noqa: S608 - table names from the models, values as parameters
    with connection.cursor() as cursor:
        cursor.execute(sql, [persona_id, persona_id, user_id, user_id])
        allowed, override = cursor.fetchone()
    return bool(allowed), override


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


def _check_attachments(conv: Conversation, ids: list[uuid.UUID], text: str) -> list[Attachment]:
    """The user's own unsent files of this thread, locked, that the model takes and that fit its budget."""
    if not ids:
        return []
    files = list(
        Attachment.objects.select_for_update()
        .filter(pk__in=ids, owner_id=conv.owner_id, conversation=conv, message__isnull=True)
        .order_by("created_at", "id")
    )
    if len(files) != len(ids):
        raise ChatError("invalid", "An attached file was not found: it was removed, already sent, or is not yours.")
    model = effective_persona(conv).resolved_model()
    taken = llm.kinds_taken(model)
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


def message_send(
    *,
    conversation: Conversation,
    client_id: uuid.UUID,
    content: object,
    edit_of: int | None = None,
    attachments: object = None,
) -> Sent:
    """Store the user's message and open the reply; a resent `client_id` changes nothing.

    `edit_of` (the last user message's id) sends an edited version of it instead: that message and
    the replies after it are hidden, kept for usage accounting. `attachments`: ids of the user's
    unsent uploads to this thread, bound to the message.
    Refusals (`invalid`, `busy`, `rate_limited`, `quota_exceeded`) store nothing.
    """
    ids = clean_attachment_ids(attachments)
    text = "" if ids and isinstance(content, str) and not content.strip() else clean_content(content)
    try:
        with transaction.atomic():
            conv = _lock(conversation)
            # The resend and the reply in progress, in one query.
            found = list(
                Message.objects.filter(conversation=conv)
                .filter(Q(client_id=client_id) | Q(status=Message.Status.STREAMING))
                .order_by("id")
            )
            existing = next((m for m in found if m.client_id == client_id), None)
            if existing:
                existing.files = list(existing.attachments.all())  # type: ignore[attr-defined]
                return Sent(existing, None)
            if found:
                raise ChatError("busy", BUSY)
            replaces: list[int] = []
            if edit_of is not None:
                last_user = conv.messages.filter(hidden=False, role=Message.Role.USER).order_by("-id").first()
                if last_user is None or last_user.pk != edit_of:
                    raise ChatError("invalid", "Only your last message can be edited.")
            _check_persona(conv)
            files = _check_attachments(conv, ids, text)
            _check_limits(conv.owner_id, _quota(conv))
            if edit_of is not None:
                replaces = list(conv.messages.filter(hidden=False, id__gte=edit_of).values_list("id", flat=True))
                conv.messages.filter(id__in=replaces).update(hidden=True)
            # The message and its reply in one INSERT; the partial unique index turns a race into `busy`.
            message, reply = Message.objects.bulk_create(
                [
                    Message(conversation=conv, role=Message.Role.USER, content=text, client_id=client_id),
                    Message(
                        conversation=conv,
                        role=Message.Role.ASSISTANT,
                        status=Message.Status.STREAMING,
                        model=effective_persona(conv).resolved_model(),
                    ),
                ]
            )
            if files:
                Attachment.objects.filter(pk__in=[f.pk for f in files]).update(message=message)
            message.files = files  # type: ignore[attr-defined]
            fields = ["updated_at"]
            conv.updated_at = timezone.now()
            if not conv.title:
                conv.title = " ".join(text.split()[:TITLE_WORDS])[:200] or ", ".join(f.name for f in files)[:200]
                fields.append("title")
            conv.save(update_fields=fields)
    except IntegrityError:
        # Another send won a race: the same client_id (a resend) or a reply opened meanwhile.
        existing = Message.objects.filter(conversation=conversation, client_id=client_id).first()
        if existing:
            existing.files = list(existing.attachments.all())  # type: ignore[attr-defined]
            return Sent(existing, None)
        raise ChatError("busy", BUSY) from None
    return Sent(message, reply, tuple(replaces))


def reply_regenerate(*, conversation: Conversation) -> tuple[Message, list[int]]:
    """A new reply to the last user message; the replies it replaces are hidden. Returns (reply, hidden ids)."""
    with transaction.atomic():
        conv = _lock(conversation)
        last_user = conv.messages.filter(hidden=False, role=Message.Role.USER).order_by("-id").first()
        if last_user is None:
            raise ChatError("invalid", "There is no message to answer yet.")
        # Busy before the limits: a refused regenerate must not count against the user's rate.
        if Message.objects.filter(conversation=conv, status=Message.Status.STREAMING).exists():
            raise ChatError("busy", BUSY)
        _check_persona(conv)
        _check_limits(conv.owner_id, _quota(conv))
        replaced = list(
            conv.messages.filter(hidden=False, role=Message.Role.ASSISTANT, id__gt=last_user.pk).values_list(
                "id", flat=True
            )
        )
        conv.messages.filter(id__in=replaced).update(hidden=True)
        reply = _open_reply(conv)
    return reply, replaced


def reply_finish(
    *,
    reply_id: int,
    owner_id: int | None = None,
    content: str,
    status: str,
    input_tokens: int | None,
    output_tokens: int | None,
    error_code: str = "",
    quota_tokens: int = 0,
) -> bool:
    """Close a streaming reply with its whole text and usage; False if something else closed it first."""
    updated = Message.objects.filter(pk=reply_id, status=Message.Status.STREAMING).update(
        content=content,
        status=status,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        error_code=error_code,
        updated_at=timezone.now(),
    )
    if updated:
        if owner_id is None:
            owner_id = Conversation.objects.filter(messages__id=reply_id).values_list("owner_id", flat=True).first()
        if owner_id is not None:
            # Estimates stand in where the provider reported nothing (a stopped reply, say).
            limits.record_usage(owner_id, quota_tokens or (input_tokens or 0) + (output_tokens or 0))
    return bool(updated)


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
    """Delete a thread and its messages. A reply still running stops at its next write (its row is gone)."""
    conversation.delete()
