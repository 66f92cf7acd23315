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


async def test_a_full_channel_joins_the_deltas_at_its_tail_so_a_replys_text_and_end_still_get_in():
    """A consumer that stopped taking messages (under uvicorn, its client stopped reading): its channel
    fills, and then deltas join the last one queued, and the `end` takes the place that joining the last
    two frees. Nothing of the reply is missed; what cannot be joined is, as before."""
    layer = InMemoryChannelLayer(capacity=3)
    stalled = await layer.new_channel()
    await layer.group_add("g", stalled)
    words = [f"w{i} " for i in range(50)]
    await layer.group_send("g", {"type": "chat.start", "message_id": 7})
    offset = 0
    for word in words:
        await layer.group_send("g", {"type": "chat.delta", "message_id": 7, "offset": offset, "text": word})
        offset += len(word)
    await layer.group_send("g", {"type": "chat.end", "message_id": 7, "status": "complete"})
    assert layer.channels[stalled].qsize() == 3  # never over its capacity
    got = [await asyncio.wait_for(layer.receive(stalled), 5) for _ in range(3)]
    assert got == [
        {"type": "chat.start", "message_id": 7},
        {"type": "chat.delta", "message_id": 7, "offset": 0, "text": "".join(words)},
        {"type": "chat.end", "message_id": 7, "status": "complete"},
    ]
    # Full of what does not join (not deltas, or deltas of two replies): the next message is missed.
    for event in ({"type": "chat.start", "message_id": 8}, {"type": "chat.delta", "message_id": 8, "offset": 0,
                  "text": "a"}, {"type": "chat.delta", "message_id": 9, "offset": 0, "text": "b"}):  # fmt: skip
        await layer.send(stalled, event)
    with pytest.raises(ChannelFull):
        await layer.send(stalled, {"type": "chat.end", "message_id": 8, "status": "complete"})
    assert (await layer.receive(stalled))["type"] == "chat.start"


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
async def test_it_delivers_in_order_between_processes_with_publishes_batched():
    # Two layer objects are two processes: what one publishes reaches the other through Redis.
    sender, receiver = RedisPubSubChannelLayer(hosts=[REDIS_URL]), RedisPubSubChannelLayer(hosts=[REDIS_URL])
    group = f"test-layers-{uuid.uuid4().hex}"
    channel = await receiver.new_channel()
    await receiver.group_add(group, channel)
    shard = sender._get_layer()._shards[0]
    rounds = 0
    write = shard._write

    async def counted() -> None:
        nonlocal rounds
        rounds += 1
        await write()

    shard._write = counted
    try:
        await asyncio.gather(*(sender.group_send(group, {"type": "chat.delta", "n": i}) for i in range(50)))
        received = [await asyncio.wait_for(receiver.receive(channel), 5) for _ in range(50)]
        assert [m["n"] for m in received] == list(range(50))
        assert rounds < 50, "each publish took its own round trip"
    finally:
        await receiver.group_discard(group, channel)
        await receiver.flush()
        await sender.flush()


def test_it_pins_the_redis_reader_and_the_groups_it_fans_out_to():
    # Our shard drops its own echoes in _receive_message: the reader must still hand every message to it,
    # and it must still fan a group's message out through `groups`, keyed by the group's channel name.
    reader = inspect.getsource(channels_redis_pubsub.RedisSingleShardConnection._do_receiving)
    assert "self._receive_message(message)" in reader, "channels-redis's reader changed: re-check redis_pubsub.py"
    fan_out = inspect.getsource(channels_redis_pubsub.RedisSingleShardConnection._receive_message)
    assert "self.channel_layer.groups[name]" in fan_out and "self.channel_layer.channels[" in fan_out
    group_add = inspect.getsource(channels_redis_pubsub.RedisPubSubLoopLayer.group_add)
    assert "self._get_group_channel_name(group)" in group_add and "self.groups[group_channel]" in group_add
    receive = inspect.getsource(channels_redis_pubsub.RedisPubSubLoopLayer.receive)
    assert "self.channel_layer.deserialize(message)" in receive, "receive no longer deserializes what it queued"


@needs_redis
async def test_a_process_serves_its_own_members_without_redis_and_publishes_for_the_others():
    here, there = RedisPubSubChannelLayer(hosts=[REDIS_URL]), RedisPubSubChannelLayer(hosts=[REDIS_URL])
    group = f"test-layers-{uuid.uuid4().hex}"
    mine, theirs = await here.new_channel(), await there.new_channel()
    await here.group_add(group, mine)
    try:
        # Nobody else listens yet.
        assert await here.remote_listeners(group) is False
        await there.group_add(group, theirs)
        assert await here.remote_listeners(group) is True
        assert await there.remote_listeners(group) is True

        event = {"type": "chat.start", "message_id": 1, "siblings": [1]}
        await here.group_send(group, event)
        # Put on this process's queue before group_send returned: no round trip through Redis.
        assert here._get_layer().channels[mine].qsize() == 1
        assert await here.receive(mine) == event
        assert await asyncio.wait_for(there.receive(theirs), 5) == event  # the other process: through Redis
        # Each member got its own copy.
        await here.group_send(group, event)
        got = await here.receive(mine)
        got["siblings"].append(2)
        assert event["siblings"] == [1]

        # group_send_local reaches this process's members only.
        here.group_send_local(group, {"type": "chat.delta", "message_id": 1, "offset": 0, "text": "a"})
        await asyncio.sleep(0.3)  # time for an echo or a delivery through Redis, if there were one
        assert await here.receive(mine) == {"type": "chat.delta", "message_id": 1, "offset": 0, "text": "a"}
        # The other process: only the second chat.start, nothing of the local delta.
        assert await asyncio.wait_for(there.receive(theirs), 5) == event
        assert there._get_layer().channels[theirs].qsize() == 0
        # Redis echoed both chat.starts back here: dropped, this process had them already.
        assert here._get_layer().channels[mine].qsize() == 0

        # A channel of this process gets its message locally; another process's through Redis.
        await here.send(mine, {"type": "x", "n": 1})
        assert here._get_layer().channels[mine].qsize() == 1
        assert await here.receive(mine) == {"type": "x", "n": 1}
        await here.send(theirs, {"type": "x", "n": 2})
        assert await asyncio.wait_for(there.receive(theirs), 5) == {"type": "x", "n": 2}
        await asyncio.sleep(0.2)
        assert here._get_layer().channels[mine].qsize() == 0
    finally:
        await here.group_discard(group, mine)
        await there.group_discard(group, theirs)
        await here.flush()
        await there.flush()


@needs_redis
async def test_without_the_local_relay_everything_goes_through_redis(monkeypatch):
    from conversations.layers import redis_pubsub

    monkeypatch.setattr(redis_pubsub, "LOCAL_RELAY", False)
    layer = RedisPubSubChannelLayer(hosts=[REDIS_URL])
    group = f"test-layers-{uuid.uuid4().hex}"
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    try:
        assert await layer.remote_listeners(group) is True  # always publish
        await layer.group_send(group, {"type": "chat.delta", "n": 1})
        assert layer._get_layer().channels[channel].qsize() == 0  # not put here directly
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "chat.delta", "n": 1}
    finally:
        await layer.group_discard(group, channel)
        await layer.flush()


@needs_redis
async def test_a_message_of_a_process_with_encrypted_messages_arrives_whole():
    keys = ["a-secret-key-for-the-test"]
    here = RedisPubSubChannelLayer(hosts=[REDIS_URL], symmetric_encryption_keys=keys)
    there = RedisPubSubChannelLayer(hosts=[REDIS_URL], symmetric_encryption_keys=keys)
    group = f"test-layers-{uuid.uuid4().hex}"
    theirs = await there.new_channel()
    await there.group_add(group, theirs)
    try:
        await here.group_send(group, {"type": "chat.delta", "text": "secret"})
        assert await asyncio.wait_for(there.receive(theirs), 5) == {"type": "chat.delta", "text": "secret"}
    finally:
        await there.group_discard(group, theirs)
        await there.flush()
        await here.flush()


LISTENED = "Relayed " + " ".join(f"w{i}" for i in range(60)) + " end."


@needs_redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("another_process_listens", [False, True])
async def test_a_reply_publishes_its_deltas_only_while_another_process_listens(
    alice, fake_provider, settings, monkeypatch, another_process_listens
):
    import msgpack
    from asgiref.sync import sync_to_async
    from channels.layers import get_channel_layer

    from conversations.generation.groups import group_name
    from conversations.layers import redis_pubsub
    from tests.conftest import open_socket
    from tests.factories import make_conversation
    from tests.fakes.provider import Reply

    published: list[tuple[str, dict]] = []
    publish = _PipelinedShard.publish

    async def recorded(self, channel, message):
        marked = message[:1] == redis_pubsub._MARK
        published.append((channel, msgpack.unpackb(message[redis_pubsub._HEADER :] if marked else message)))
        await publish(self, channel, message)

    monkeypatch.setattr(_PipelinedShard, "publish", recorded)
    conv = await sync_to_async(make_conversation)(alice)
    group = group_name(conv.pk)
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    other = RedisPubSubChannelLayer(hosts=[REDIS_URL], prefix=prefix)  # a socket of another process
    theirs = await other.new_channel()
    if another_process_listens:
        await other.group_add(group, theirs)
    # The first token waits until the reply listens to other processes (and has asked who listens).
    fake_provider.script(Reply(text=LISTENED, token_delay=0.002, first_token_delay=0.5))
    ok, ws = await open_socket(alice, conv.pk)
    assert ok and (await ws.recv())["type"] == "state"
    await ws.send_message("go")
    start = await ws.until("start")
    end = await ws.until("end", timeout=10)
    assert ws.text_of(start["message_id"]) == LISTENED == end["content"]  # this process's socket: everything
    kinds = [m["type"] for channel, m in published if channel.endswith(group)]
    assert kinds[0] == "chat.message" and "chat.start" in kinds and kinds[-1] == "chat.end"
    if another_process_listens:
        assert kinds.count("chat.delta") > 10
        received = []
        while not received or received[-1]["type"] != "chat.end":
            received.append(await asyncio.wait_for(other.receive(theirs), 5))
        assert "".join(m["text"] for m in received if m["type"] == "chat.delta") == LISTENED
        await other.group_discard(group, theirs)
    else:
        assert "chat.delta" not in kinds  # no other process listened: no delta went through Redis
    await ws.close()
    await other.flush()
    assert get_channel_layer() is not other


def test_the_in_memory_layer_has_no_other_process():
    layer = InMemoryChannelLayer()
    assert asyncio.run(layer.remote_listeners("g")) is False


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
@pytest.mark.parametrize("sender", ["this process", "another process"])
async def test_the_redis_layer_joins_contiguous_queued_deltas_of_one_reply_and_keeps_the_order(sender):
    # Queued as dicts (this process's own events) or as serialized messages (from Redis): joined alike.
    layer = RedisPubSubChannelLayer(hosts=[REDIS_URL])
    other = layer if sender == "this process" else RedisPubSubChannelLayer(hosts=[REDIS_URL])
    group = f"test-layers-{uuid.uuid4().hex}"
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    try:
        for event in QUEUED:
            await other.group_send(group, event)
        queue = layer._get_layer().channels[channel]
        for _ in range(50):  # until Redis has delivered all of them to the socket's queue
            if queue.qsize() == len(QUEUED):
                break
            await asyncio.sleep(0.05)
        assert queue.qsize() == len(QUEUED)
        assert isinstance(queue._queue[0], dict if sender == "this process" else bytes)
        assert await _drain(layer, channel, len(JOINED)) == JOINED
    finally:
        await layer.group_discard(group, channel)
        await layer.flush()
        await other.flush()


DELTA = {"type": "chat.delta", "message_id": 1, "offset": 0, "text": "a"}
NEXT = {"type": "chat.delta", "message_id": 1, "offset": 1, "text": "b"}
END = {"type": "chat.end", "message_id": 1, "status": "complete"}


async def _hands_deltas_to_takers(layer, group):
    """A delta goes to a socket's taker instead of its queue while nothing is queued for it; any other
    event, a delta behind a queued event, and a delta a taker declines are queued, in order."""
    taker, plain = await layer.new_channel(), await layer.new_channel()
    await layer.group_add(group, taker)
    await layer.group_add(group, plain)
    taken: list[dict] = []
    accept = True

    def take(message):
        if accept:
            taken.append(message)
        return accept

    layer.takers[taker] = take
    try:
        layer.group_send_local(group, DELTA)
        assert taken == [DELTA]
        assert await _drain(layer, plain, 1) == [DELTA]  # a channel without a taker: queued
        layer.group_send_local(group, END)  # not a delta: queued, never offered
        layer.group_send_local(group, NEXT)  # behind the queued end: queued too
        assert taken == [DELTA]
        assert await _drain(layer, taker, 2) == [END, NEXT]
        accept = False  # the socket is busy with a message: it declines
        layer.group_send_local(group, NEXT)
        assert await _drain(layer, taker, 1) == [NEXT]
        assert await _drain(layer, plain, 3) == [END, NEXT, NEXT]
    finally:
        layer.takers.pop(taker, None)
        await layer.group_discard(group, taker)
        await layer.group_discard(group, plain)


async def test_the_in_memory_layer_hands_a_delta_to_a_socket_with_nothing_queued():
    await _hands_deltas_to_takers(InMemoryChannelLayer(), "g")


@needs_redis
async def test_the_redis_layer_hands_a_delta_to_a_socket_of_this_process_with_nothing_queued():
    layer = RedisPubSubChannelLayer(hosts=[REDIS_URL])
    try:
        await _hands_deltas_to_takers(layer, f"test-layers-{uuid.uuid4().hex}")
    finally:
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
