"""The channel layers, made cheap per message for hundreds of live streams (docs/performance.md).

- `InMemoryChannelLayer` (memory.py): one process; Channels' in-memory layer without its per-message sweep.
- `RedisPubSubChannelLayer` (redis_pubsub.py): several processes; channels-redis's pub/sub layer with
  its publishes pipelined.

Both lean on private parts of Channels and channels-redis; tests/test_layers.py pins each of them, so a
dependency upgrade that changes one fails there first.
"""

from __future__ import annotations

from .memory import InMemoryChannelLayer
from .redis_pubsub import RedisPubSubChannelLayer

__all__ = ["InMemoryChannelLayer", "RedisPubSubChannelLayer"]
