"""channels-redis's pub/sub channel layer (several processes): publishes pipelined, and a process's
own sockets served without Redis.

- channels-redis publishes one message per round trip under a per-shard lock; measured at N=50 on
  PostgreSQL + Redis, that took the per-token latency p50 from 10 ms (pipelined) to 218 ms
  (docs/performance.md; `BENCH_VARIANTS=stock-redis-layer` switches this module off).
- A message for a group or a channel with members in this process is put on their queues at once, as
  a dict: no serialization, no round trip through Redis and back. It is still published for the other
  processes, marked with this process's origin so that its own reader drops it when Redis echoes it
  back. A channel of this process gets its message locally only. `group_send_local` puts a message on
  this process's members only: a running reply uses it for its deltas while no other process listens
  (`remote_listeners`, generation/reply.py). `BENCH_VARIANTS=no-local-relay` switches this off.
  A delta put there goes straight to a socket that can take it at once (direct.py).

Private parts of channels-redis relied on (pinned by tests/test_layers.py): the proxy's `_get_layer`,
`_layers`, `_args`, `_kwargs` and `channels_redis.utils._wrap_close`; the loop layer's `_shards`,
`_get_shard`, `_get_group_channel_name`, and its `channels` dict of `asyncio.Queue`s of serialized
messages (peeked at to join queued deltas, coalesce.py) and `groups` dict of member sets keyed by
group channel name; a shard's `__init__(host, channel_layer)`, `publish(channel, message)` (the only
way the loop layer publishes), `_receive_message(message)` (the reader's one entry point),
`_ensure_redis()` and the client it leaves in `_redis`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import Any


def _import_serializers_without_fernet() -> None:
    """Import channels-redis's serializers without `cryptography.fernet` when nothing has loaded it.

    They import it (and with it cryptography's Rust bindings, about 7 MB of a process's memory) only
    for `symmetric_encryption_keys`, which the site's layer settings never set; when it is missing they
    take their own "not installed" path. The module is hidden for this one import only: anything that
    imports it afterwards (a JWT check at single sign-on, say) gets it as usual, and a layer given
    encryption keys imports it then (`RedisPubSubChannelLayer.__init__`)."""
    if "cryptography.fernet" in sys.modules or "channels_redis.serializers" in sys.modules:
        return
    sys.modules["cryptography.fernet"] = None  # type: ignore[assignment]  # import system: "not installed"
    try:
        import channels_redis.serializers  # noqa: F401
    finally:
        if sys.modules.get("cryptography.fernet", False) is None:
            del sys.modules["cryptography.fernet"]


def _with_fernet() -> None:
    """Give channels-redis's serializers the Fernet that `_import_serializers_without_fernet` kept from
    them, for a layer that encrypts its messages."""
    import channels_redis.serializers as serializers
    from cryptography.fernet import Fernet, MultiFernet

    serializers.Fernet, serializers.MultiFernet = Fernet, MultiFernet


_import_serializers_without_fernet()

from channels_redis.pubsub import RedisPubSubChannelLayer as BaseRedisPubSubChannelLayer  # noqa: E402
from channels_redis.pubsub import RedisPubSubLoopLayer, RedisSingleShardConnection  # noqa: E402
from channels_redis.utils import _wrap_close  # noqa: E402

from .coalesce import coalesce  # noqa: E402
from .direct import DELTA, Taker, handed  # noqa: E402
from .memory import copy_message  # noqa: E402

LOCAL_RELAY = True  # the benchmark's `no-local-relay` variant sets it off (bench/variants.py)

# A published message starts with this byte and the publishing layer's 8-byte origin. 0xc1 is the one
# byte msgpack never uses, and encrypted messages (Fernet tokens) start with "g": nothing else starts so.
_MARK = b"\xc1"
_HEADER = len(_MARK) + 8


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

    def _receive_message(self, message: Any) -> None:
        """What Redis delivers: dropped if this process published it (its members have it already),
        else passed on without the origin mark."""
        if message is not None:
            data = message["data"]
            if data[:1] == _MARK:
                if data[1:_HEADER] == self.channel_layer.origin:
                    return
                message = {**message, "data": data[_HEADER:]}
        super()._receive_message(message)


class _PipelinedLoopLayer(RedisPubSubLoopLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shards: list[RedisSingleShardConnection] = [_PipelinedShard(s.host, self) for s in self._shards]
        self.origin = os.urandom(8)
        self.takers: dict[str, Taker] = {}  # channel -> its socket's taker of deltas (direct.py)

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message; a delta with the contiguous deltas queued behind it joined (coalesce.py).
        The queue holds serialized messages (from Redis) and dicts (from this process): the head is read
        to see whether it continues the delta."""
        message: dict[str, Any] = await super().receive(channel)
        queue = self.channels.get(channel)
        if queue is None:
            return message
        return coalesce(message, queue._queue, self.channel_layer.deserialize, queue.get_nowait)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        queue = self.channels.get(channel) if LOCAL_RELAY else None
        if queue is not None:  # a channel of this process: nobody else listens on it
            queue.put_nowait(copy_message(message))
            return
        await self._publish(channel, message)

    def group_send_local(self, group: str, message: dict[str, Any]) -> None:
        """Put a message on the queues of the group's members in this process (no other process gets it);
        a delta goes straight to each socket that can take it now (direct.py)."""
        takers = self.takers if message["type"] == DELTA and self.takers else None
        for channel in self.groups.get(self._get_group_channel_name(group), ()):
            queue = self.channels.get(channel)
            if queue is not None:
                if takers is not None and handed(takers, channel, queue, message):
                    continue
                queue.put_nowait(copy_message(message))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """The group's members in this process get the message now; the other processes through Redis."""
        if LOCAL_RELAY:
            self.group_send_local(group, message)
        await self._publish(self._get_group_channel_name(group), message)

    async def remote_listeners(self, group: str) -> bool:
        """Whether another process may have members in the group: anyone subscribed to it in Redis but
        this process. Asked when a reply starts; a socket of another process that joins later asks the
        reply for its text (generation/control.py), which makes the reply publish from then on."""
        if not LOCAL_RELAY:
            return True
        name = self._get_group_channel_name(group)
        shard = self._get_shard(name)
        shard._ensure_redis()
        [(_, subscribers)] = await shard._redis.pubsub_numsub(name)
        return int(subscribers) > (1 if name in self.groups else 0)

    async def _publish(self, channel: str, message: dict[str, Any]) -> None:
        data = self.channel_layer.serialize(message)
        if LOCAL_RELAY:
            data = _MARK + self.origin + data
        await self._get_shard(channel).publish(channel, data)


class RedisPubSubChannelLayer(BaseRedisPubSubChannelLayer):
    """channels-redis's pub/sub layer, with publishes pipelined (see _PipelinedShard) and a process's
    own members served without Redis (see _PipelinedLoopLayer.group_send)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("symmetric_encryption_keys"):
            _with_fernet()
        super().__init__(*args, **kwargs)

    def _get_layer(self) -> RedisPubSubLoopLayer:
        loop = asyncio.get_running_loop()
        try:
            return self._layers[loop]
        except KeyError:
            layer = _PipelinedLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
            return layer

    def receive(self, channel: str) -> Coroutine[Any, Any, dict[str, Any]]:
        """The loop layer's `receive`, called directly: channels-redis's proxy wraps every call in a
        `functools.partial` and a coroutine of its own (`_async_proxy`), once per message a socket gets."""
        return self._get_layer().receive(channel)

    def deserialize(self, message: Any) -> dict[str, Any]:
        if isinstance(message, dict):  # put on the queue by this process, never serialized
            return message
        result: dict[str, Any] = super().deserialize(message)
        return result

    def group_send_local(self, group: str, message: dict[str, Any]) -> None:
        self._get_layer().group_send_local(group, message)

    @property
    def takers(self) -> dict[str, Taker]:
        """This event loop's sockets' takers of deltas (direct.py)."""
        return self._get_layer().takers

    async def remote_listeners(self, group: str) -> bool:
        result: bool = await self._get_layer().remote_listeners(group)
        return result
