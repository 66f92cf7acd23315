"""A user's settings (Profile), share links with their snapshot, and import jobs run in the background."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from conversations.models import Conversation

STALLED_AFTER = dt.timedelta(hours=1)


def new_share_token() -> str:
    """An unguessable link token: 32 bytes (256 bits) of randomness, URL-safe."""
    return secrets.token_urlsafe(32)


class Profile(models.Model):
    """What a user chooses on /account/: how they are called and how the site looks."""

    class Theme(models.TextChoices):
        SYSTEM = "system", "Same as my system"
        LIGHT = "light", "Light"
        DARK = "dark", "Dark"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    display_name = models.CharField(max_length=100, blank=True)
    theme = models.CharField(max_length=8, choices=Theme.choices, default=Theme.SYSTEM)

    def __str__(self) -> str:
        return f"{self.user}: {self.theme}"


class ShareLink(models.Model):
    """A read-only link to a snapshot of a conversation's active path, taken when the link was made."""

    token = models.CharField(max_length=64, unique=True, default=new_share_token, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="share_links")
    # Deleting the thread deletes its links: a deleted thread leaves nothing readable behind.
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="share_links")
    title = models.CharField(max_length=200)
    # [{"role", "content", "created_at"}], copied from the active path: later edits never leak in.
    messages = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.title} ({self.token[:6]}…)"


class ImportJob(models.Model):
    """A large import running in the background: its file waits in storage until the worker reads it."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="import_jobs")
    filename = models.CharField(max_length=255)
    path = models.CharField(max_length=300, blank=True, help_text="The upload in the default storage.")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    total = models.PositiveIntegerField(default=0, help_text="Conversations found in the file.")
    done = models.PositiveIntegerField(default=0, help_text="Conversations imported so far.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.filename}: {self.status}"

    @property
    def in_progress(self) -> bool:
        """Queued or running, and recently enough that a worker may still finish it."""
        return self.status in (self.Status.QUEUED, self.Status.RUNNING) and not self.stalled

    @property
    def stalled(self) -> bool:
        """Never finished: its worker died (the import's single transaction then stored nothing)."""
        old = timezone.now() - STALLED_AFTER
        return self.status in (self.Status.QUEUED, self.Status.RUNNING) and self.created_at < old
