"""Per-user API keys: named, stored hashed (a prefix kept for display), revocable."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ApiKey(models.Model):
    """One key a user made for their scripts; the key itself is shown once and never stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    # The key's first characters, to tell keys apart on the page and to find a key's row.
    prefix = models.CharField(max_length=16, db_index=True)
    # sha256 of the whole key, hex: the key is 190+ random bits, so a slow hash buys nothing.
    hashed = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
