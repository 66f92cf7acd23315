"""The channel layers, made cheap per message for hundreds of live streams (docs/performance.md).

- `InMemoryChannelLayer` (memory.py): one process; Channels' in-memory layer without its per-message sweep.
- `RedisPubSubChannelLayer` (redis_pubsub.py): several processes; channels-redis's pub/sub layer with
  its publishes pipelined.

The Redis layer is imported only when it is asked for (`CHANNEL_LAYERS` names it when `REDIS_URL` is
set): channels-redis, redis-py and the `cryptography` bindings channels-redis's serializers import hold
about 15 MB that a single process on the in-memory layer has no use for.

Both lean on private parts of Channels and channels-redis; tests/test_layers.py pins each of them, so a
dependency upgrade that changes one fails there first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .memory import InMemoryChannelLayer

if TYPE_CHECKING:
    from .redis_pubsub import RedisPubSubChannelLayer

__all__ = ["InMemoryChannelLayer", "RedisPubSubChannelLayer"]


def __getattr__(name: str) -> Any:
    if name == "RedisPubSubChannelLayer":
        from .redis_pubsub import RedisPubSubChannelLayer

        return RedisPubSubChannelLayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
