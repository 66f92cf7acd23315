"""channels-redis's pub/sub channel layer (several processes), with its publishes pipelined.

channels-redis publishes one message per round trip under a per-shard lock; measured at N=50 on
PostgreSQL + Redis, that took the per-token latency p50 from 10 ms (pipelined) to 218 ms
(docs/performance.md; `BENCH_VARIANTS=stock-redis-layer` switches this module off).

Private parts of channels-redis relied on (pinned by tests/test_layers.py): the proxy's `_get_layer`,
`_layers`, `_args`, `_kwargs` and `channels_redis.utils._wrap_close`; the loop layer's `_shards`; a
shard's `__init__(host, channel_layer)`, `publish(channel, message)` (the only way the loop layer
publishes), `_ensure_redis()` and the client it leaves in `_redis`; the loop layer's `channels` dict of
`asyncio.Queue`s of serialized messages (peeked at to join queued deltas, coalesce.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels_redis.pubsub import RedisPubSubChannelLayer as BaseRedisPubSubChannelLayer
from channels_redis.pubsub import RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close

from .coalesce import coalesce


class _PipelinedShard(RedisSingleShardConnection):
    """A shard whose publishes share round trips.

    channels-redis publishes one message per round trip, each under the shard's lock: a process's
    every delta waits for the one before it, whichever conversation it belongs to, so under load
    the queue of publishes (and the latency of every token) grows without bound. Here a publish
    joins an outbox; one writer task sends everything waiting in one pipeline (no transaction),
    so a round trip carries as many messages as arrived during the last one. Order is kept (one
    writer, first in first out), and a caller still waits until its message is with Redis.
    A cancelled caller only stops waiting: its message is sent or not, whole, by the writer.
    """

    def __init__(self, host: Any, channel_layer: Any) -> None:
        super().__init__(host, channel_layer)
        self._outbox: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def publish(self, channel: str, message: bytes) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((channel, message, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write())
        await done

    async def _write(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                self._ensure_redis()
                pipe = self._redis.pipeline(transaction=False)
                for channel, message, _ in batch:
                    pipe.publish(channel, message)
                await pipe.execute()
            except Exception as exc:
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for *_, done in batch:
                    if not done.done():
                        done.set_result(None)


class _PipelinedLoopLayer(RedisPubSubLoopLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shards: list[RedisSingleShardConnection] = [_PipelinedShard(s.host, self) for s in self._shards]

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message; a delta with the contiguous deltas queued behind it joined (coalesce.py).
        The queue holds serialized messages: the head is read to see whether it continues the delta."""
        message: dict[str, Any] = await super().receive(channel)
        queue = self.channels.get(channel)
        if queue is None:
            return message
        return coalesce(message, queue._queue, self.channel_layer.deserialize, queue.get_nowait)


class RedisPubSubChannelLayer(BaseRedisPubSubChannelLayer):
    """channels-redis's pub/sub layer, with publishes pipelined (see _PipelinedShard)."""

    def _get_layer(self) -> RedisPubSubLoopLayer:
        loop = asyncio.get_running_loop()
        try:
            return self._layers[loop]
        except KeyError:
            layer = _PipelinedLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
            return layer
