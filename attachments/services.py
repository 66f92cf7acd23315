"""Writes: store an upload (after every check), remove an unsent one, sweep the orphans."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from conversations import pricing
from conversations.attachment import MB, model_takes, storage_allowance, storage_used
from conversations.models import Attachment, Conversation
from conversations.services import effective_persona

from .processing import prepare
from .sniff import Refused

__all__ = ["Refused", "attachment_upload", "check_size", "orphans_sweep"]

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

log = logging.getLogger(__name__)

KIND_NAMES = {"image": "images", "pdf": "PDFs", "text": "text files"}


def max_upload_bytes() -> int:
    return settings.CHAT_MAX_UPLOAD_MB * MB


def check_size(size: int) -> None:
    """Refuse a file over CHAT_MAX_UPLOAD_MB (before its bytes are even read, when the size is known)."""
    if size > max_upload_bytes():
        raise Refused(f"That file is {size / MB:.1f} MB; the limit is {settings.CHAT_MAX_UPLOAD_MB} MB.")


def attachment_upload(*, owner: AbstractBaseUser, conversation: Conversation, upload: UploadedFile) -> Attachment:
    """Check `upload` (size, quota, kind by content, the thread's model takes it) and store it, unsent."""
    size = upload.size or 0
    check_size(size)
    if storage_used(owner.pk) + size > storage_allowance():
        raise Refused(
            f"Your files take up your whole storage allowance ({settings.CHAT_USER_STORAGE_MB} MB). "
            "Delete conversations with attachments to make room."
        )
    prepared = prepare(upload)
    model = pricing.thread_model(conversation, effective_persona(conversation))
    if prepared.kind not in model_takes(model).kinds:
        raise Refused(f"The model of this chat ({model}) does not take {KIND_NAMES[prepared.kind]}.")
    name = _clean_name(upload.name or "file")
    attachment = Attachment(
        owner_id=owner.pk,
        conversation=conversation,
        name=name,
        kind=prepared.kind,
        content_type=prepared.content_type,
        size=prepared.content.size or size,
        width=prepared.width,
        height=prepared.height,
        pages=prepared.pages,
        text=prepared.text,
        tokens=prepared.tokens,
    )
    # The storage streams the file in chunks (a local file, or an S3 multipart upload).
    try:
        attachment.file.save(name, prepared.content, save=False)
        if prepared.rendition is not None:
            attachment.rendition.save(name, prepared.rendition, save=False)
        attachment.save()
    except Exception:
        for stored in (attachment.file, attachment.rendition):
            if stored.name:
                stored.storage.delete(stored.name)  # no row, no file
        raise
    return attachment


def _clean_name(name: str) -> str:
    """The user's file name without a path or control characters, at most 255 characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if c.isprintable()).strip() or "file"
    return base[-255:]


def attachment_remove(*, attachment: Attachment) -> None:
    """Remove an upload that was not sent (the composer's ✕); its file goes after the commit."""
    with transaction.atomic():
        Attachment.objects.filter(pk=attachment.pk, message__isnull=True).delete()


def orphans_sweep(*, older_than: dt.timedelta | None = None) -> int:
    """Delete uploads never sent within CHAT_ORPHAN_HOURS (their files too); returns how many."""
    age = older_than if older_than is not None else dt.timedelta(hours=settings.CHAT_ORPHAN_HOURS)
    cutoff = timezone.now() - age
    count = 0
    # Row by row so each file's deletion follows its own row's (post_delete, after the commit).
    for attachment in Attachment.objects.filter(message__isnull=True, created_at__lt=cutoff).iterator():
        with transaction.atomic():
            count += Attachment.objects.filter(pk=attachment.pk, message__isnull=True).delete()[0]
    if count:
        log.info("swept %d unsent attachments", count)
    return count
