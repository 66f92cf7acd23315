"""The cache as one object per process, for what websockets do: the socket counts and the send limits.

Django keeps a cache object per async context (`django.core.cache.cache` finds it in an asgiref
`Local`), and a websocket's consumer keeps its context for as long as the socket is open: every socket
that counted itself in, or sent a message, kept a cache object of its own: with django-redis, its own
Redis client, about 17 KB a socket. The backends this site configures (django-redis, locmem) are safe
to share between threads and tasks.
"""

from __future__ import annotations

import functools
from typing import Any, cast

from django.core.cache import DEFAULT_CACHE_ALIAS, BaseCache, caches


@functools.cache
def _shared() -> BaseCache:
    return caches.create_connection(DEFAULT_CACHE_ALIAS)


class _ProcessCache:
    """`cache.add(...)` and the rest, on the process's one cache object (made on first use)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_shared(), name)


cache = cast(BaseCache, _ProcessCache())
