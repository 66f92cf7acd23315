"""Writes for the account: settings, share links, continuing a shared thread, imports, deleting the account."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import IntegerField, Max, Sum
from django.db.models.functions import Cast, TruncDate
from django.utils import timezone

from conversations import selectors
from conversations.attachment import MB, storage_allowance, storage_used
from conversations.models import Attachment, Conversation, DailyUsage, Message, UsageRecord

from . import importing, paths
from .context_processors import profile_cache_key
from .models import ImportJob, Profile, ShareLink

log = logging.getLogger(__name__)


def profile_for(user: User) -> Profile:
    """The user's settings (made on first use)."""
    profile, _ = Profile.objects.get_or_create(user=user)
    return profile


def profile_update(*, user: User, display_name: str | None = None, theme: str | None = None) -> Profile:
    """Save the display name and/or theme; an unknown theme is refused with ValueError."""
    profile = profile_for(user)
    if theme is not None:
        if theme not in Profile.Theme.values:
            raise ValueError(f"unknown theme {theme!r}")
        profile.theme = theme
    if display_name is not None:
        profile.display_name = display_name.strip()[:100]
    profile.save()
    cache.delete(profile_cache_key(user.pk))
    return profile


# -- share links --------------------------------------------------------------------------------------
@transaction.atomic
def share_create(*, conversation: Conversation) -> ShareLink:
    """A link to a snapshot of the conversation's active path as it is now."""
    path = [m for m in paths.active_path(conversation) if m.status != Message.Status.STREAMING or m.content]
    files: dict[int, list[dict[str, object]]] = {}
    for a in Attachment.objects.filter(message_id__in=[m.pk for m in path]).order_by("position", "created_at", "id"):
        files.setdefault(a.message_id or 0, []).append(a.as_json())  # served within the link (attachments/)
    snapshot = [
        {"role": m.role, "content": m.content, "created_at": m.created_at.isoformat()}
        | ({"attachments": files[m.pk]} if m.pk in files else {})
        for m in path
    ]
    return ShareLink.objects.create(
        owner=conversation.owner, conversation=conversation, title=str(conversation), messages=snapshot
    )


def share_revoke(*, owner: User, conversation_id: uuid.UUID | None, token: str | None) -> int:
    """Revoke one link (by token) or every live link of a conversation; returns how many were revoked."""
    links = ShareLink.objects.filter(owner=owner, revoked_at__isnull=True)
    if token:
        links = links.filter(token=token)
    if conversation_id is not None:
        links = links.filter(conversation_id=conversation_id)
    return links.update(revoked_at=timezone.now())


@dataclass(frozen=True)
class Continued:
    """A shared thread copied into a reader's account, and what could not come along (for the reader)."""

    conversation: Conversation
    left_out: str = ""


@transaction.atomic
def share_continue(*, link: ShareLink, user: User) -> Continued:
    """Copy a shared snapshot, with its files, into a new conversation of `user`, to go on from there."""
    persona = selectors.persona_for_user(user, None)
    if persona is None:
        raise importing.ImportFailed("No persona is available to you. Ask an admin.")
    draft = importing.Draft(
        title=link.title,
        created_at=None,
        nodes=[
            paths.Node(
                key=str(i),
                parent=str(i - 1) if i else None,
                role=m["role"],
                content=m["content"],
                created_at=importing._time(m.get("created_at"), "shared message"),
            )
            for i, m in enumerate(link.messages)
        ],
    )
    draft.persona = persona.slug
    [conversation] = importing.store(owner=user, drafts=[draft])
    left_out = _copy_shared_files(link, user, conversation)
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
    return Continued(conversation, left_out)


def _copy_shared_files(link: ShareLink, user: User, conversation: Conversation) -> str:
    """Give the copied messages the snapshot's files: rows of `user`'s that share the owner's stored bytes
    (counted against `user`'s storage, all or none). Returns what the reader should know, if anything."""
    wanted = [(i, str(f.get("id"))) for i, m in enumerate(link.messages) for f in m.get("attachments", ())]
    if not wanted:
        return ""
    # Locked: a delete of the owner's rows waits for this commit, then sees the copies and keeps the bytes.
    rows = {
        str(a.pk): a
        for a in Attachment.objects.select_for_update().filter(pk__in=[i for _, i in wanted], owner_id=link.owner_id)
    }
    # The snapshot's messages were stored in order: the n-th of the new thread is the n-th of the snapshot.
    message_ids = list(conversation.messages.order_by("id").values_list("id", flat=True))
    positions: dict[int, int] = {}
    copies = []
    for index, file_id in wanted:
        if file_id in rows:
            position = positions[index] = positions.get(index, -1) + 1
            copies.append(
                rows[file_id].copied(
                    owner_id=user.pk, conversation_id=conversation.pk, message_id=message_ids[index], position=position
                )
            )
    held = set(
        Attachment.objects.filter(owner_id=user.pk, file__in=[c.file.name for c in copies]).values_list(
            "file", flat=True
        )
    )
    added = sum({c.file.name: c.size for c in copies if c.file.name not in held}.values())
    if added and storage_used(user.pk) + added > storage_allowance():
        return (
            f"The shared files ({added / MB:.1f} MB) were not copied: they do not fit in your storage allowance "
            f"({storage_allowance() // MB} MB). Delete conversations with attachments to make room."
        )
    Attachment.objects.bulk_create(copies)
    gone = len(wanted) - len(copies)
    return "Some of the shared files are no longer there and were not copied." if gone else ""


# -- imports -------------------------------------------------------------------------------------------
def inline_import_bytes() -> int:
    """Files up to this size are imported during the request; larger ones by the worker."""
    return int(getattr(settings, "ACCOUNT_IMPORT_INLINE_KB", 1024)) * 1024


def import_now(*, owner: User, name: str, data: bytes) -> list[Conversation]:
    """Parse and store a file at once (ImportFailed: nothing stored)."""
    return importing.store(owner=owner, drafts=importing.parse(name, data))


def import_queue(*, owner: User, name: str, data: bytes) -> ImportJob:
    """Keep the file in storage and let the worker import it; the job reports progress."""
    from .tasks import run_import

    if len(data) > importing.max_bytes():
        raise importing.ImportFailed(
            f"The file is larger than the {importing.max_bytes() // (1024 * 1024)} MB this site accepts."
        )
    job = ImportJob(owner=owner, filename=name[:255])
    job.path = default_storage.save(f"imports/{job.id}.upload", ContentFile(data))
    job.save()
    transaction.on_commit(lambda: run_import.enqueue(str(job.id)))
    return job


def import_run(job_id: str) -> ImportJob:
    """The worker's side of an import: parse, store all or nothing, record the outcome, drop the file."""
    job = ImportJob.objects.select_related("owner").get(pk=job_id)
    if job.status != ImportJob.Status.QUEUED:
        return job
    ImportJob.objects.filter(pk=job.pk).update(status=ImportJob.Status.RUNNING)
    try:
        with default_storage.open(job.path, "rb") as f:
            data = f.read()
        drafts = importing.parse(job.filename, data)
        ImportJob.objects.filter(pk=job.pk).update(total=len(drafts))
        importing.store(owner=job.owner, drafts=drafts)
        job.status, job.done, job.total = ImportJob.Status.DONE, len(drafts), len(drafts)
    except importing.ImportFailed as exc:
        job.status, job.error = ImportJob.Status.FAILED, exc.message
    except Exception:
        log.exception("import %s failed", job.pk)
        job.status, job.error = ImportJob.Status.FAILED, "The import failed on the server; nothing was imported."
    finally:
        if job.path:
            default_storage.delete(job.path)
    job.finished_at = timezone.now()
    job.path = ""
    job.save(update_fields=["status", "done", "total", "error", "finished_at", "path"])
    return job


# -- deleting the account ------------------------------------------------------------------------------
def _end_sessions(user_id: int) -> int:
    """Delete every stored session of the user (database sessions; others die with the user row)."""
    ended = 0
    if settings.SESSION_ENGINE.endswith(("db", "cached_db")):
        for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator(chunk_size=500):
            if session.get_decoded().get("_auth_user_id") == str(user_id):
                session.delete()
                ended += 1
    return ended


# Usage of deleted accounts is kept for the admin's charts under this account (no one can sign in
# as it, and sign-up cannot make the name: parentheses and a space are not allowed in usernames).
DELETED_ACCOUNTS = "(deleted accounts)"

_SUMS = ("calls", "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "cost")


def _deleted_accounts() -> User:
    user, created = User.objects.get_or_create(username=DELETED_ACCOUNTS, defaults={"is_active": False})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


def _anonymize_usage(user: User) -> int:
    """Fold the user's usage rows into one row per UTC day, model, persona and kind, owned by nobody in
    particular (DELETED_ACCOUNTS): the totals stay in the charts, nothing points back at the person.

    The daily rollup follows: the user's rows go, each folded row is added to the anonymous account's.
    """
    rows = UsageRecord.objects.filter(user=user)
    groups = list(
        rows.annotate(day=TruncDate("created_at", tzinfo=dt.UTC))
        .values("day", "model", "persona_id", "kind")
        # Max over 0/1, not the boolean itself: PostgreSQL has no max(boolean).
        .annotate(estimated_any=Max(Cast("estimated", IntegerField())), **{f"sum_{f}": Sum(f) for f in _SUMS})
        # One order for every deletion, so two at once take the anonymous rollup rows in the same order.
        .order_by("day", "model", "persona_id", "kind")
    )
    owner = _deleted_accounts() if groups else None
    folded = [
        UsageRecord(
            user=owner,
            persona_id=g["persona_id"],
            model=g["model"],
            kind=g["kind"],
            estimated=bool(g["estimated_any"]),
            created_at=dt.datetime.combine(g["day"], dt.time(12), tzinfo=dt.UTC),
            **{f: g[f"sum_{f}"] or 0 for f in _SUMS},  # type: ignore[literal-required]
        )
        for g in groups
    ]
    rows.delete()
    DailyUsage.objects.filter(user=user).delete()
    UsageRecord.objects.bulk_create(folded)  # bulk_create skips save(): the rollup is added to here
    for record in folded:
        DailyUsage.add(record)
    return len(folded)


def account_delete(*, user: User) -> None:
    """Delete the user and everything they own (usage kept only as anonymous daily totals); sign out all
    their sessions."""
    user_id = user.pk
    paths_to_delete = list(ImportJob.objects.filter(owner=user).exclude(path="").values_list("path", flat=True))
    with transaction.atomic():
        _anonymize_usage(user)
        # Conversations first: the persona/PROTECT graph below them is the conversations app's.
        Conversation.objects.filter(owner=user).delete()
        user.delete()
    cache.delete(profile_cache_key(user_id))
    for path in paths_to_delete:
        default_storage.delete(path)
    _end_sessions(user_id)
