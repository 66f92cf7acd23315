"""The channel layers and the private parts of Channels and channels-redis they rely on.

conversations/layers/ overrides or reuses internals of its dependencies for speed (docs/performance.md).
Each test named `test_it_pins_*` states one assumption about such an internal: when an upgrade of
channels or channels-redis changes it, the test fails with what to re-check, before the site breaks.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid

import pytest
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as StockInMemoryLayer
from channels_redis import pubsub as channels_redis_pubsub
from channels_redis import utils as channels_redis_utils

from conversations.layers import InMemoryChannelLayer, RedisPubSubChannelLayer, coalesce
from conversations.layers.redis_pubsub import _PipelinedLoopLayer, _PipelinedShard

REDIS_URL = os.environ.get("REDIS_URL", "")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (the PostgreSQL + Redis pass runs it)")


# -- in memory ------------------------------------------------------------------------------------------


def test_it_pins_the_in_memory_layers_receive_calling_clean_expired():
    # Our throttled sweep only replaces the base class's: its receive must still be what calls it.
    assert "self._clean_expired()" in inspect.getsource(StockInMemoryLayer.receive), (
        "channels' InMemoryChannelLayer.receive no longer calls _clean_expired: re-check conversations/layers/memory.py"
    )
    assert list(inspect.signature(StockInMemoryLayer._clean_expired).parameters) == ["self"]


async def test_it_pins_the_in_memory_queues_and_their_entries():
    # Our _put writes channels[name] = asyncio.Queue of (expires_at, message): the base receive must read it.
    layer = InMemoryChannelLayer(capacity=2, expiry=60)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "chat.delta", "text": "a"})
    assert isinstance(layer.channels[channel], asyncio.Queue)
    expires_at, message = layer.channels[channel]._queue[0]
    assert message == {"type": "chat.delta", "text": "a"}
    assert time.time() + 50 < expires_at <= time.time() + 60
    assert await StockInMemoryLayer.receive(layer, channel) == {"type": "chat.delta", "text": "a"}


async def test_it_pins_the_base_sweep_dropping_expired_messages_and_their_channels_groups():
    layer = InMemoryChannelLayer(expiry=60)
    old, fresh = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("g", old)
    await layer.group_add("g", fresh)
    await layer.send(old, {"type": "x"})
    await layer.send(fresh, {"type": "y"})
    layer.channels[old]._queue[0] = (time.time() - 1, {"type": "x"})  # as if sent 61 s ago
    layer._last_sweep = 0.0
    layer._clean_expired()
    assert old not in layer.channels
    assert set(layer.groups["g"]) == {fresh}
    assert await layer.receive(fresh) == {"type": "y"}


async def test_it_sweeps_at_most_once_a_second():
    layer = InMemoryChannelLayer(expiry=60)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "x"})
    layer._clean_expired()  # the sweep of this second
    layer.channels[channel]._queue[0] = (time.time() - 1, {"type": "x"})
    layer._clean_expired()
    assert channel in layer.channels, "swept twice within a second"
    layer._last_sweep -= layer.sweep_interval
    layer._clean_expired()
    assert channel not in layer.channels


async def test_it_gives_each_member_of_a_group_its_own_copy():
    layer = InMemoryChannelLayer()
    a, b = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("g", a)
    await layer.group_add("g", b)
    nested = {"type": "chat.end", "usage": {"input_tokens": 1}}
    await layer.group_send("g", nested)
    got_a, got_b = await layer.receive(a), await layer.receive(b)
    assert got_a == got_b == nested
    got_a["usage"]["input_tokens"] = 99
    assert got_b["usage"]["input_tokens"] == 1 and nested["usage"]["input_tokens"] == 1


async def test_it_skips_a_full_channel_in_a_group_and_raises_on_a_direct_send():
    layer = InMemoryChannelLayer(capacity=1)
    full, free = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("g", full)
    await layer.group_add("g", free)
    await layer.send(full, {"type": "first"})
    await layer.group_send("g", {"type": "second"})
    assert await layer.receive(free) == {"type": "second"}
    assert await layer.receive(full) == {"type": "first"}
    await layer.send(full, {"type": "third"})
    with pytest.raises(ChannelFull):
        await layer.send(full, {"type": "fourth"})


# -- Redis ----------------------------------------------------------------------------------------------


def test_it_pins_the_redis_proxys_get_layer_and_its_state():
    # We replace _get_layer to build our loop layer: it must still be the one place a loop layer is made,
    # from _args/_kwargs, cached in _layers per loop and closed through _wrap_close.
    source = inspect.getsource(channels_redis_pubsub.RedisPubSubChannelLayer._get_layer)
    for needed in ("self._layers[loop]", "RedisPubSubLoopLayer(", "*self._args", "**self._kwargs",
                   "channel_layer=self", "_wrap_close(self, loop)"):  # fmt: skip
        assert needed in source, f"channels-redis's _get_layer changed ({needed!r}): re-check redis_pubsub.py"
    assert list(inspect.signature(channels_redis_utils._wrap_close).parameters) == ["proxy", "loop"]
    layer = RedisPubSubChannelLayer("redis://127.0.0.1:1/0", prefix="p")
    assert layer._args == ("redis://127.0.0.1:1/0",) and layer._kwargs == {"prefix": "p"} and layer._layers == {}


def test_it_pins_the_redis_shards():
    assert list(inspect.signature(channels_redis_pubsub.RedisSingleShardConnection.__init__).parameters) == [
        "self",
        "host",
        "channel_layer",
    ]
    loop_layer = _PipelinedLoopLayer(hosts=["redis://127.0.0.1:1/0"], channel_layer=None)
    assert [type(shard) for shard in loop_layer._shards] == [_PipelinedShard]
    assert loop_layer._shards[0].host["address"] == "redis://127.0.0.1:1/0"
    # Every publish of the loop layer goes through the shard's publish(channel, message).
    for method in ("send", "group_send"):
        source = inspect.getsource(getattr(channels_redis_pubsub.RedisPubSubLoopLayer, method))
        assert ".publish(" in source, f"RedisPubSubLoopLayer.{method} no longer publishes through its shard"
    assert list(inspect.signature(channels_redis_pubsub.RedisSingleShardConnection.publish).parameters) == [
        "self",
        "channel",
        "message",
    ]


async def test_it_pins_ensure_redis_leaving_a_client_that_pipelines():
    shard = _PipelinedShard({"address": "redis://127.0.0.1:1/0"}, None)
    assert shard._redis is None
    shard._ensure_redis()
    pipe = shard._redis.pipeline(transaction=False)
    assert callable(pipe.publish) and inspect.iscoroutinefunction(pipe.execute)
    await shard.flush()


async def test_it_fails_the_waiting_publishers_when_redis_does_not_answer():
    shard = _PipelinedShard({"address": "redis://127.0.0.1:1/0"}, None)  # nothing listens on port 1
    results = await asyncio.gather(shard.publish("a", b"1"), shard.publish("b", b"2"), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results), results
    await shard.flush()


@needs_redis
async def test_it_delivers_in_order_with_publishes_batched():
    layer = RedisPubSubChannelLayer(hosts=[REDIS_URL])
    group = f"test-layers-{uuid.uuid4().hex}"
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    shard = layer._get_layer()._shards[0]
    assert isinstance(shard, _PipelinedShard)
    rounds = 0
    write = shard._write

    async def counted() -> None:
        nonlocal rounds
        rounds += 1
        await write()

    shard._write = counted
    try:
        await asyncio.gather(*(layer.group_send(group, {"type": "chat.delta", "n": i}) for i in range(50)))
        received = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(50)]
        assert [m["n"] for m in received] == list(range(50))
        assert rounds < 50, "each publish took its own round trip"
    finally:
        await layer.group_discard(group, channel)
        await layer.flush()


# -- queued deltas leave as one event (conversations/layers/coalesce.py) --------------------------------

QUEUED = [
    {"type": "chat.delta", "message_id": 7, "offset": 0, "text": "Hel"},
    {"type": "chat.delta", "message_id": 7, "offset": 3, "text": "lo "},
    {"type": "chat.delta", "message_id": 7, "offset": 6, "text": "you"},
    {"type": "chat.delta", "message_id": 8, "offset": 0, "text": "other reply"},  # another reply: not joined
    {"type": "chat.delta", "message_id": 8, "offset": 20, "text": "gap"},  # not contiguous: not joined
    {"type": "chat.end", "message_id": 8, "status": "complete"},  # keeps its place
    {"type": "chat.delta", "message_id": 9, "offset": 0, "text": "a"},
    {"type": "chat.delta", "message_id": 9, "offset": 1, "text": "b"},
]
JOINED = [
    {"type": "chat.delta", "message_id": 7, "offset": 0, "text": "Hello you"},
    {"type": "chat.delta", "message_id": 8, "offset": 0, "text": "other reply"},
    {"type": "chat.delta", "message_id": 8, "offset": 20, "text": "gap"},
    {"type": "chat.end", "message_id": 8, "status": "complete"},
    {"type": "chat.delta", "message_id": 9, "offset": 0, "text": "ab"},
]


async def _drain(layer, channel, count):
    return [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(count)]


async def test_the_in_memory_layer_joins_contiguous_queued_deltas_of_one_reply_and_keeps_the_order():
    assert coalesce.ENABLED
    layer = InMemoryChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    for event in QUEUED:
        await layer.group_send("g", event)
    assert await _drain(layer, channel, len(JOINED)) == JOINED
    assert channel not in layer.channels  # drained queues are dropped, as the base class does
    # Nothing waits for more: a lone delta leaves as it came.
    await layer.send(channel, QUEUED[0])
    assert await layer.receive(channel) == QUEUED[0]


@needs_redis
async def test_the_redis_layer_joins_contiguous_queued_deltas_of_one_reply_and_keeps_the_order():
    layer = RedisPubSubChannelLayer(hosts=[REDIS_URL])
    group = f"test-layers-{uuid.uuid4().hex}"
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    try:
        for event in QUEUED:
            await layer.group_send(group, event)
        queue = layer._get_layer().channels[channel]
        for _ in range(50):  # until Redis has delivered all of them to the socket's queue
            if queue.qsize() == len(QUEUED):
                break
            await asyncio.sleep(0.05)
        assert queue.qsize() == len(QUEUED)
        assert await _drain(layer, channel, len(JOINED)) == JOINED
    finally:
        await layer.group_discard(group, channel)
        await layer.flush()


# -- the cache ------------------------------------------------------------------------------------------


@needs_redis
def test_it_shares_one_redis_connection_pool_between_cache_objects(settings):
    # Django makes a cache object per async context; django-redis must give them all one pool per process.
    from django.core.cache import caches

    assert settings.CACHES["default"]["BACKEND"] == "django_redis.cache.RedisCache"
    first, second = caches.create_connection("default"), caches.create_connection("default")
    assert first is not second
    assert first.client.get_client().connection_pool is second.client.get_client().connection_pool
    first.set("chat:test-layers", 1, timeout=5)
    assert second.incr("chat:test-layers") == 2
