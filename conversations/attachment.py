"""A file a user attached to a message: its stored bytes (Django's storage API) and what the model needs of it.

It lives in `conversations` because a message's provider request is built from it; the upload and
serve views, the sniffing and the processing live in the `attachments` app, which imports this.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.conf import settings
from django.core.files.storage import Storage
from django.db import models, transaction
from django.db.models import Max, Sum
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .context import AttachmentRef
from .llm import kinds_taken


@dataclass(frozen=True)
class Takes:
    """What a model can be sent besides text: the kinds, and whether it reads a PDF itself."""

    kinds: frozenset[str]
    native_pdf: bool


def model_takes(spec: str) -> Takes:
    """What `provider:model` takes: the registry's `supports_images`/`supports_pdf` for a model it lists,
    else its provider's default. A PDF goes to any model: natively where it reads PDFs, else as its text."""
    from .models import ChatModel

    entry = ChatModel.objects.filter(name=spec).only("supports_images", "supports_pdf").first()
    provider = spec.partition(":")[0]
    if entry is None:
        kinds = kinds_taken(spec)
        return Takes(kinds, native_pdf="pdf" in kinds and provider == "anthropic")
    listed = {"text", "pdf"} | ({"image"} if entry.supports_images else set())
    return Takes(frozenset(listed), native_pdf=entry.supports_pdf and provider == "anthropic")


MB = 1024 * 1024


def storage_used(owner_id: int) -> int:
    """Bytes of attachments the user has stored: each stored file once, however many of their rows show
    it (versions of a message that kept it, a shared thread continued twice)."""
    files = Attachment.objects.filter(owner_id=owner_id).values("file").annotate(bytes=Max("size")).order_by()
    return files.aggregate(total=Sum("bytes"))["total"] or 0


def storage_allowance() -> int:
    """Bytes of attachments a user may store (CHAT_USER_STORAGE_MB)."""
    return int(settings.CHAT_USER_STORAGE_MB) * MB


def attachment_path(instance: Attachment, filename: str) -> str:
    """Where the bytes go in the storage: per owner, under a random name (the user's name is in the row)."""
    return f"attachments/{instance.owner_id}/{uuid.uuid4().hex}"


class Attachment(models.Model):
    """An uploaded image, PDF or text file; bound to the user message it was sent with (`message`)."""

    class Kind(models.TextChoices):
        IMAGE = "image"
        PDF = "pdf"
        TEXT = "text"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_attachments")
    conversation = models.ForeignKey("conversations.Conversation", on_delete=models.CASCADE, related_name="attachments")
    # Null until the message is sent; an attachment never sent is an orphan (swept after a day).
    message = models.ForeignKey(
        "conversations.Message", null=True, blank=True, on_delete=models.CASCADE, related_name="attachments"
    )
    # Its place among the message's files: the order of the send's `attachments` list (the composer's).
    position = models.PositiveSmallIntegerField(default=0)
    name = models.CharField(max_length=255)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    content_type = models.CharField(max_length=100)
    size = models.BigIntegerField()
    file = models.FileField(upload_to=attachment_path, max_length=300)
    # An image larger than a provider reads: a copy at the larger of OpenAI's and Anthropic's sizes
    # (images.rendition_size), made at upload, so a request never decodes the original again.
    rendition = models.FileField(upload_to=attachment_path, max_length=300, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    pages = models.PositiveIntegerField(null=True, blank=True)
    # PDFs: their text, sent to models that cannot read the PDF itself (text files are read from storage).
    text = models.TextField(blank=True)
    # Estimated tokens of the text a model reads (a text file fenced, a PDF's text); images: 0.
    tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["position", "created_at", "id"]
        indexes = [
            models.Index(fields=["message"]),
            # Whether any row still refers to a stored file, when one that did is deleted.
            models.Index(fields=["file"], name="attachment_file"),
            models.Index(fields=["created_at"], condition=models.Q(message__isnull=True), name="unsent_attachments"),
        ]

    def __str__(self) -> str:
        return self.name

    def copied(self, **changes: object) -> Attachment:
        """A new, unsaved row for the same stored bytes: a file kept by an edit (a new version of its
        message), or copied with a shared thread. The bytes stay until no row refers to them."""
        skip = {"id", "message", "position", "created_at"}
        fields = {f.attname: getattr(self, f.attname) for f in self._meta.concrete_fields if f.name not in skip}
        files = {"file": self.file.name, "rendition": self.rendition.name}  # names: the same stored objects
        return Attachment(**(fields | files | changes))

    def as_ref(self) -> AttachmentRef:
        """The attachment as request history sees it (context.py's pure view)."""
        return AttachmentRef(
            id=str(self.pk),
            name=self.name,
            kind=self.kind,
            content_type=self.content_type,
            tokens=self.tokens,
            width=self.width or 0,
            height=self.height or 0,
            pages=self.pages or 0,
        )

    def as_json(self) -> dict[str, object]:
        """What the upload answers and the protocol's `message` carries."""
        return {"id": str(self.pk), "name": self.name, "size": self.size, "content_type": self.content_type}


@receiver(post_delete, sender=Attachment)
def _delete_file(sender: type[Attachment], instance: Attachment, **kwargs: object) -> None:
    """The stored bytes go with the last row that refers to them, however it went (a deleted conversation,
    account or orphan).

    A signal rather than a service: rows disappear by cascade from several directions (a thread,
    an account, the admin), and each must take its file along. After the commit, so a rolled-back
    delete keeps its file, and so the check sees every row committed by then: one that copies a row
    locks it first (`SELECT … FOR UPDATE`), so a delete racing the copy commits after it, and sees it.
    """
    name, rendition, storage = instance.file.name, instance.rendition.name or "", instance.file.storage
    if name:
        transaction.on_commit(lambda: _delete_unreferenced(storage, name, rendition))


def _delete_unreferenced(storage: Storage, name: str, rendition: str) -> None:
    if Attachment.objects.filter(file=name).exists():
        return  # another version of the message, or a copied shared thread, still shows these bytes
    storage.delete(name)
    if rendition:
        storage.delete(rendition)
