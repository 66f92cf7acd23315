"""How many websockets each user has open, counted in the cache (Redis: across every process).

The count is a safety bound, not a ledger: a process killed with sockets open never takes its
counts back, so each user's counter expires `TTL` seconds after it was created and starts again
from zero (which may let a few more sockets in for a while, never fewer).
"""

from __future__ import annotations

import logging

from django.conf import settings

from .caching import cache

log = logging.getLogger(__name__)

TTL = 3600


def _key(user_id: int) -> str:
    return f"chat:sockets:{user_id}"


async def claim(user_id: int) -> bool:
    """Count one more socket for the user; False (and nothing counted) when over the limit."""
    limit = settings.CHAT_MAX_SOCKETS_PER_USER
    if limit <= 0:
        return True
    key = _key(user_id)
    await cache.aadd(key, 0, timeout=TTL)
    try:
        count = await cache.aincr(key)
    except ValueError:  # expired between add and incr
        await cache.aset(key, 1, timeout=TTL)
        count = 1
    if count > limit:
        await release(user_id)
        return False
    return True


async def release(user_id: int) -> None:
    """The socket closed: count it out (never below zero)."""
    if settings.CHAT_MAX_SOCKETS_PER_USER <= 0:
        return
    key = _key(user_id)
    try:
        if await cache.adecr(key) < 0:
            await cache.aset(key, 0, timeout=TTL)
    except ValueError:  # expired: nothing to take back
        pass
