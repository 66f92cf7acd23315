"""Django's Redis cache with one client (and so one connection pool) per process.

Django keeps cache objects per async context, and every `sync_to_async` call runs in a fresh one:
each call from a websocket or a reply built a new `RedisCache`, a new connection pool and a new
TCP connection to Redis (with its handshake and health check) for a single command. Under load
that was a tenth of the server's time (docs/performance.md). redis-py clients and pools are
thread-safe, so one per process, shared by every cache object with the same settings, is enough.
"""

from __future__ import annotations

import threading

from django.core.cache.backends.redis import RedisCache as BaseRedisCache
from django.core.cache.backends.redis import RedisCacheClient

_clients: dict[str, RedisCacheClient] = {}
_lock = threading.Lock()


class RedisCache(BaseRedisCache):
    @property
    def _cache(self) -> RedisCacheClient:  # type: ignore[override]
        key = repr((self._servers, sorted(self._options.items())))
        client = _clients.get(key)
        if client is None:
            with _lock:
                client = _clients.get(key)
                if client is None:
                    client = _clients[key] = self._class(self._servers, **self._options)
        return client
