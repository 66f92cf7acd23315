"""API keys: make one (shown once), revoke one, and find the key a request's header names."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from .models import ApiKey

if TYPE_CHECKING:
    from django.contrib.auth.models import User

KEY_START = "csk-"
PREFIX_LENGTH = 12  # "csk-" and 8 random characters: shown on the page, used to find the row
MAX_NAME = 100
# last_used_at is written at most this often per key: not one UPDATE per request.
TOUCH_EVERY = timedelta(seconds=60)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_create(*, user: User, name: str) -> tuple[ApiKey, str]:
    """A new key for `user`: the row, and the key itself (the only time it exists in the clear)."""
    key = KEY_START + secrets.token_urlsafe(32)  # 43 URL-safe characters, 256 bits
    row = ApiKey.objects.create(
        user=user,
        name=name.strip()[:MAX_NAME] or "Unnamed key",
        prefix=key[:PREFIX_LENGTH],
        hashed=_digest(key),
    )
    return row, key


@transaction.atomic
def api_key_revoke(*, key: ApiKey) -> ApiKey:
    """Revoke `key` (once: a second revoke keeps the first time)."""
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


def key_from_header(authorization: str) -> str | None:
    """The key in `Authorization: Bearer <key>`, or None."""
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value.startswith(KEY_START) or len(value) > 200:
        return None
    return value


def api_key_authenticate(key: str) -> ApiKey | None:
    """The live key row (with its active user) for `key`, or None; compared in constant time."""
    digest = _digest(key)
    candidates = ApiKey.objects.select_related("user").filter(prefix=key[:PREFIX_LENGTH], revoked_at__isnull=True)
    found = None
    for row in candidates:
        if hmac.compare_digest(row.hashed, digest):
            found = row
    if found is None or not found.user.is_active:
        return None
    now = timezone.now()
    if found.last_used_at is None or now - found.last_used_at > TOUCH_EVERY:
        ApiKey.objects.filter(pk=found.pk).update(last_used_at=now)
        found.last_used_at = now
    return found
