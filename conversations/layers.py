"""The channel layers, made cheap per message for hundreds of live streams.

In memory (one process):

Channels' InMemoryChannelLayer costs grow with the number of streams (see docs/architecture.md,
"The channel layer", and the A/B runs in docs/performance.md):
- it walks every channel and group on every send and receive to drop expired messages;
  expiry is a safety net (60 s), so sweeping once a second changes nothing a user can see;
- `group_send` starts one task per member channel and awaits them with `as_completed`, although
  each put is synchronous; here the puts happen in a plain loop;
- every message is deep-copied per channel; a message of plain scalars (every `chat.delta`)
  gets a flat copy instead, which is the same thing for such a message.

On Redis (several processes): channels-redis's pub/sub layer with its publishes pipelined
(`RedisPubSubChannelLayer` below).
"""

from __future__ import annotations

import asyncio
import time
from copy import deepcopy
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as BaseInMemoryChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer as BaseRedisPubSubChannelLayer
from channels_redis.pubsub import RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close

_SCALARS = (str, int, float, bool, type(None))


def _copy(message: dict[str, Any]) -> dict[str, Any]:
    """An independent copy of a message, as deepcopy makes it, without deepcopy's cost for flat ones."""
    for value in message.values():
        if not isinstance(value, _SCALARS):
            return deepcopy(message)
    return dict(message)


class InMemoryChannelLayer(BaseInMemoryChannelLayer):
    sweep_interval = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_sweep = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < self.sweep_interval:
            return
        self._last_sweep = now
        super()._clean_expired()

    def _put(self, channel: str, message: dict[str, Any]) -> None:
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        try:
            queue.put_nowait((time.time() + self.expiry, _copy(message)))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Put a message on a channel (the base class's checks, then one put)."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        assert "__asgi_channel__" not in message
        self._put(channel, message)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Put a message on every channel of a group; a full channel misses it, as in the base class."""
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        for channel in list(self.groups.get(group, ())):
            try:  # noqa: SIM105 - a plain try costs less than contextlib.suppress on this hot path
                self._put(channel, message)
            except ChannelFull:
                pass


# -- Redis ---------------------------------------------------------------------------------------------


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
        self._shards = [_PipelinedShard(shard.host, self) for shard in self._shards]


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
