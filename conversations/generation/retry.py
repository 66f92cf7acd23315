"""How long to wait before asking the provider again (before the first token only)."""

from __future__ import annotations

import random

from django.conf import settings


def backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with jitter (between half and all of the ceiling), or the provider's
    Retry-After when it gives one."""
    if retry_after is not None:
        return min(retry_after, settings.CHAT_RETRY_MAX_DELAY)
    ceiling = min(settings.CHAT_RETRY_MAX_DELAY, settings.CHAT_RETRY_BASE_DELAY * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto
