"""The websocket protocol, frame by frame, on the real ASGI stack with the offline and fake providers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid

import pytest
from asgiref.sync import sync_to_async

from conversations.llm.offline import demo_text
from conversations.models import Conversation, Message
from tests.conftest import open_socket
from tests.factories import make_conversation, make_turns
from tests.fakes.provider import Reply

pytestmark = pytest.mark.django_db(transaction=True)


async def messages_of(conversation):
    return await sync_to_async(lambda: list(Message.objects.filter(conversation=conversation).order_by("id")))()


async def test_it_streams_a_reply_and_stores_it(alice, settings):
    # Words a few milliseconds apart, as a provider sends them (with no delay at all, every delta is
    # queued before the socket runs, and the queued ones leave as one frame: test_layers.py).
    settings.CHAT_OFFLINE_WORD_DELAY = 0.003
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    assert ok
    assert await ws.recv() == {"type": "state", "generating": None}
    client_id = await ws.send_message("Hello there")
    message = await ws.until("message")
    assert message["message"]["content"] == "Hello there"
    assert message["message"]["client_id"] == client_id
    assert message["message"]["role"] == "user"
    start = await ws.until("start")
    assert start["model"] == "offline:demo"
    end = await ws.until("end")
    assert end["status"] == "complete"
    assert ws.text_of(start["message_id"]) == end["content"]
    assert "offline demo model" in end["content"]
    assert len([f for f in ws.frames if f["type"] == "delta"]) > 20  # word by word
    rows = await messages_of(conv)
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "complete")]
    assert rows[1].content == end["content"]
    assert rows[1].output_tokens and end["usage"]["output_tokens"] == rows[1].output_tokens
    await ws.close()


async def test_it_streams_through_the_openai_sdk_exactly(alice, fake_provider):
    text = "Streaming *works*: " + " ".join(f"tok{i}" for i in range(200)) + " ünïcödé 漢字 🎉 end."
    fake_provider.script(Reply(text=text, input_tokens=42, output_tokens=205))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("Go")
    start = await ws.until("start")
    end = await ws.until("end")
    assert end["status"] == "complete"
    assert ws.text_of(start["message_id"]) == text == end["content"]
    assert end["usage"] == {"input_tokens": 42, "output_tokens": 205, "cached_input_tokens": 0, "cost": "0.000000"}
    reply = (await messages_of(conv))[-1]
    assert (reply.content, reply.input_tokens, reply.output_tokens) == (text, 42, 205)
    await ws.close()


async def test_it_streams_through_the_anthropic_sdk_exactly(alice, fake_provider, settings):
    settings.CHAT_DEFAULT_MODEL = "anthropic:claude-test"
    text = "Anthropic " + " ".join(f"w{i}" for i in range(100))
    fake_provider.script(Reply(text=text, input_tokens=17, output_tokens=101))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("Hi")
    start = await ws.until("start")
    end = await ws.until("end")
    assert ws.text_of(start["message_id"]) == text == end["content"]
    assert end["usage"] == {"input_tokens": 17, "output_tokens": 101, "cached_input_tokens": 0, "cost": "0.000000"}
    assert fake_provider.requests[-1].path == "/v1/messages"
    await ws.close()


async def test_the_request_carries_the_system_prompt_first_and_once_and_every_turn(alice, fake_provider):
    conv = await sync_to_async(make_conversation)(alice)
    earlier = await sync_to_async(make_turns)(conv, 4)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("And now?")
    await ws.until("end")
    body = fake_provider.requests[-1].json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == conv.persona.system_prompt
    assert [m["content"] for m in body["messages"][1:5]] == [m.content for m in earlier]
    assert body["messages"][-1]["content"] == "And now?"
    rows = await messages_of(conv)
    assert conv.persona.system_prompt not in [m.content for m in rows]
    await ws.close()


async def test_anthropic_gets_the_system_prompt_in_system(alice, fake_provider, settings):
    settings.CHAT_DEFAULT_MODEL = "anthropic:claude-test"
    conv = await sync_to_async(make_conversation)(alice)
    await sync_to_async(make_turns)(conv, 2)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("Next")
    await ws.until("end")
    body = fake_provider.requests[-1].json
    assert body["system"] == conv.persona.system_prompt
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert all(conv.persona.system_prompt not in str(m["content"]) for m in body["messages"])
    await ws.close()


async def test_a_resent_client_id_stores_one_message_and_starts_one_reply(alice):
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    client_id = await ws.send_message("Once")
    first = await ws.until("message")
    await ws.until("end")
    await ws.send_message("Once", client_id=client_id)
    again = await ws.until("message")
    assert again == first
    await asyncio.sleep(0.3)
    assert await ws.c.receive_nothing(timeout=0.3)  # no start, no reply
    rows = await messages_of(conv)
    assert [m.role for m in rows] == ["user", "assistant"]
    await ws.close()


async def test_a_send_during_a_reply_is_busy_and_stores_nothing(alice, fake_provider):
    fake_provider.script(Reply(text="slow " * 40, token_delay=0.02))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("first")
    await ws.until("delta")
    await ws.send_message("second")
    error = await ws.until("error")
    assert error["code"] == "busy"
    await ws.until("end")
    rows = await messages_of(conv)
    assert [m.content for m in rows if m.role == "user"] == ["first"]
    await ws.close()


async def test_stop_keeps_what_was_streamed(alice, fake_provider):
    fake_provider.script(Reply(text="word " * 500, token_delay=0.01))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("long please")
    start = await ws.until("start")
    for _ in range(5):
        await ws.until("delta")
    await ws.send({"type": "stop"})
    end = await ws.until("end")
    assert end["status"] == "stopped"
    assert 0 < len(end["content"]) < len("word " * 500)
    assert ws.text_of(start["message_id"]) == end["content"]
    reply = (await messages_of(conv))[-1]
    assert (reply.status, reply.content) == ("stopped", end["content"])
    await ws.close()


async def test_closing_the_socket_does_not_stop_the_reply_and_reconnecting_rebuilds_it(alice, fake_provider):
    text = " ".join(f"t{i}" for i in range(150))
    fake_provider.script(Reply(text=text, token_delay=0.005))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("go")
    start = await ws.until("start")
    for _ in range(10):
        await ws.until("delta")
    await ws.close()
    await asyncio.sleep(0.1)  # tokens stream while nobody listens
    ok, ws2 = await open_socket(alice, conv.pk)
    state = await ws2.recv()
    assert state["type"] == "state"
    assert state["generating"]["message_id"] == start["message_id"]
    assert state["generating"]["offset"] == len(state["generating"]["text"]) > 0
    end = await ws2.until("end")
    assert ws2.text_of(start["message_id"]) == text == end["content"]
    await ws2.close()


async def test_resume_sends_the_rest_from_an_offset(alice, fake_provider):
    text = " ".join(f"r{i}" for i in range(80))
    fake_provider.script(Reply(text=text, token_delay=0.01))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("go")
    start = await ws.until("start")
    await ws.until("delta")
    await ws.send({"type": "resume", "message_id": start["message_id"], "offset": 1})
    resumed = await ws.until("delta", offset=1)
    assert len(resumed["text"]) >= 1
    assert text.startswith(text[:1] + resumed["text"])
    end = await ws.until("end")
    await ws.send({"type": "resume", "message_id": start["message_id"], "offset": 10})
    after = await ws.until("delta", offset=10)
    assert after["text"] == end["content"][10:]
    await ws.close()


async def test_a_second_socket_gets_the_same_events(alice, fake_provider):
    text = " ".join(f"s{i}" for i in range(60))
    fake_provider.script(Reply(text=text, token_delay=0.002))
    conv = await sync_to_async(make_conversation)(alice)
    ok1, one = await open_socket(alice, conv.pk)
    ok2, two = await open_socket(alice, conv.pk)
    await one.recv()
    await two.recv()
    await one.send_message("both see this")
    for ws in (one, two):
        await ws.until("end")
    relevant = {"message", "start", "delta", "end"}
    assert [f for f in one.frames if f["type"] in relevant] == [f for f in two.frames if f["type"] in relevant]
    start = next(f for f in two.frames if f["type"] == "start")
    assert two.text_of(start["message_id"]) == text
    await one.close()
    await two.close()


async def test_regenerate_shows_the_new_reply_and_keeps_the_old_as_a_version(alice, fake_provider):
    fake_provider.script(Reply(text="first answer"), Reply(text="second answer"))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("q")
    first = await ws.until("end")
    await ws.send({"type": "regenerate"})
    start = await ws.until("start")
    assert start["siblings"] == [first["message_id"], start["message_id"]]
    second = await ws.until("end")
    assert second["content"] == "second answer"
    from conversations.selectors import active_path

    conv = await sync_to_async(Conversation.objects.get)(pk=conv.pk)
    shown = await sync_to_async(lambda: [p.message.content for p in active_path(conv)])()
    assert shown == ["q", "second answer"]
    # Both requests answered the same question.
    assert [r.json["messages"][-1]["content"] for r in fake_provider.requests] == ["q", "q"]
    await ws.close()


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "send", "client_id": "not-a-uuid", "content": "x"},
        {"type": "send", "client_id": str(uuid.uuid4()), "content": ""},
        {"type": "send", "client_id": str(uuid.uuid4()), "content": 12},
        {"type": "send", "client_id": str(uuid.uuid4())},
        {"type": "resume", "message_id": "1", "offset": 0},
        {"type": "resume", "message_id": 1, "offset": -1},
        {"type": "switch", "message_id": "1"},
        {"type": "switch"},
        {"type": "regenerate", "message_id": True},
        {"type": "send", "client_id": str(uuid.uuid4()), "content": "x", "parent_id": "1"},
        {"type": "send", "client_id": str(uuid.uuid4()), "content": "x", "parent_id": 99999},
        {"type": "explode"},
        ["not", "an", "object"],
        {"no": "type"},
    ],
)
async def test_invalid_frames_get_invalid_and_store_nothing(alice, frame):
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send(frame)
    error = await ws.recv()
    assert error["type"] == "error" and error["code"] == "invalid", error
    assert error["message"]
    assert await messages_of(conv) == []
    await ws.close()


async def test_non_json_and_oversized_frames_are_invalid(alice, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 50
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.c.send_to(text_data="{nope")
    assert (await ws.recv())["code"] == "invalid"
    await ws.send_message("x" * 51)
    assert (await ws.recv())["code"] == "invalid"
    assert await messages_of(conv) == []
    await ws.close()


async def test_resume_of_an_unknown_reply_is_not_found(alice):
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send({"type": "resume", "message_id": 999999, "offset": 0})
    assert (await ws.recv())["code"] == "not_found"
    await ws.close()


async def test_the_offline_demo_streams_the_same_reply_to_the_same_request():
    from conversations.llm import ChatRequest, Usage
    from conversations.llm.offline import OfflineProvider, words_of

    def request(text: str) -> ChatRequest:
        return ChatRequest(model="demo", system="", messages=[{"role": "user", "content": text}])

    async def streamed(text: str) -> tuple[str, list[Usage]]:
        items = [item async for item in OfflineProvider().stream(request(text))]
        return "".join(i for i in items if isinstance(i, str)), [i for i in items if isinstance(i, Usage)]

    first, usage = await streamed("same words")
    again, _ = await streamed("same words")
    other, _ = await streamed("other words entirely")
    assert first == again == demo_text(request("same words"))
    assert "> same words" in first and "2 words" in first
    assert other != first and "> other words entirely" in other
    assert len(usage) == 1 and usage[0].output_tokens == len(words_of(first))


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _timing_lines():
    """The lines `conversations.timing` logs meanwhile."""
    from conversations import timing

    handler = _Lines()
    logging.getLogger(timing.__name__).addHandler(handler)
    try:
        yield handler.lines
    finally:
        logging.getLogger(timing.__name__).removeHandler(handler)


async def test_with_stage_timing_on_a_reply_logs_its_stages(alice, fake_provider, monkeypatch):
    monkeypatch.setenv("CHAT_STAGE_TIMING", "1")
    fake_provider.script(Reply(text="one two three", first_token_delay=0.05))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    with _timing_lines() as logged:
        await ws.send_message("Time me")
        start = await ws.until("start")
        await ws.until("end")
    lines = [line for line in logged if line.startswith("stage-timing ")]
    assert len(lines) == 1, lines  # one line per reply, at its first token
    stages = json.loads(lines[0].removeprefix("stage-timing "))
    assert stages.pop("reply") == start["message_id"]
    # The send builds its reply's request in the same trip to the database that stored it.
    assert list(stages) == ["db_start", "stored", "request", "task", "provider", "first_token", "published"]
    times = list(stages.values())
    assert times == sorted(times) and times[0] >= 0
    assert stages["first_token"] - stages["provider"] >= 0.04  # the provider's 50 ms before its first token
    await ws.close()


async def test_without_stage_timing_nothing_is_logged(alice, monkeypatch):
    monkeypatch.delenv("CHAT_STAGE_TIMING", raising=False)
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    with _timing_lines() as logged:
        await ws.send_message("Quiet")
        await ws.until("end")
    assert logged == []
    await ws.close()


@pytest.mark.parametrize("hop", [False, True], ids=["as built", "with the cleanup hop"])
async def test_a_frame_is_handled_while_the_database_thread_is_busy(alice, monkeypatch, hop):
    """A frame that needs no database is answered at once, however long the one database thread is
    busy (a burst of sends): Channels' per-message connection cleanup would first queue it there."""
    import time

    from channels.db import database_sync_to_async

    from conversations.consumers import ChatConsumer

    monkeypatch.setattr(ChatConsumer, "frame_cleanup_hop", hop)
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    busy = asyncio.ensure_future(database_sync_to_async(time.sleep)(1.5))
    await asyncio.sleep(0.05)  # the thread is taken
    started = time.monotonic()
    await ws.send({"type": "dance"})
    error = await ws.until("error", timeout=5)
    waited = time.monotonic() - started
    assert error["code"] == "invalid"
    if hop:  # the switch is what makes the difference: with it, the frame waited for the thread
        assert waited > 1.0, waited
    else:
        assert waited < 1.0, waited
    await busy
    await ws.close()


class Source:
    """One of a socket's sources (the client's frames, the channel layer): its messages, a few
    milliseconds apart, then nothing more (it waits until cancelled, as a quiet socket does)."""

    def __init__(self, name: str, count: int, gap: float) -> None:
        self.messages = [{"source": name, "n": n} for n in range(count)]
        self.gap = gap
        self.cancelled = False

    async def __call__(self):
        if self.messages:
            await asyncio.sleep(self.gap)
            return self.messages.pop(0)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_the_socket_loop_handles_one_message_at_a_time_in_each_sources_order():
    from conversations.consumers import dispatch_many

    frames, events = Source("frames", 20, 0.001), Source("events", 40, 0.0005)
    handled: list[dict] = []
    running = 0

    async def dispatch(message):
        nonlocal running
        running += 1
        assert running == 1, "two handlers ran at once"
        await asyncio.sleep(0.0007)  # a handler that awaits (a send to the client)
        handled.append(message)
        running -= 1
        if len(handled) == 60:
            raise ValueError("all handled")

    with pytest.raises(ValueError, match="all handled"):
        await asyncio.wait_for(dispatch_many([frames, events], dispatch), 10)
    assert [m["n"] for m in handled if m["source"] == "frames"] == list(range(20))
    assert [m["n"] for m in handled if m["source"] == "events"] == list(range(40))
    # Both sources were taken turns with, not one drained before the other.
    first_frame = next(i for i, m in enumerate(handled) if m["source"] == "frames")
    assert first_frame < 40


async def test_the_socket_loop_ends_on_stop_consumer_and_cancels_the_other_source():
    from channels.exceptions import StopConsumer

    from conversations.consumers import dispatch_many

    frames, events = Source("frames", 1, 0.001), Source("events", 0, 0)

    async def dispatch(message):
        raise StopConsumer

    with pytest.raises(StopConsumer):
        await asyncio.wait_for(dispatch_many([frames, events], dispatch), 10)
    assert events.cancelled


@pytest.mark.parametrize("break_cycles", [True, False])
async def test_the_socket_loop_leaves_no_cycle_for_the_collector_when_it_ends(break_cycles, monkeypatch):
    """A disconnect's StopConsumer leaves `dispatch_many`'s frame in its traceback; holding the tasks that
    hold it, that frame made a cycle only the collector could free. With the collector off, what the
    handler belonged to is freed as the loop ends (and is not, with the frame's references kept)."""
    import gc
    import weakref

    from channels.exceptions import StopConsumer

    from conversations import consumers

    monkeypatch.setattr(consumers, "BREAK_CYCLES", break_cycles)

    class Consumer:
        async def dispatch(self, message):
            raise StopConsumer

    async def run() -> weakref.ref:
        consumer = Consumer()
        frames, events = Source("frames", 1, 0.001), Source("events", 0, 0)
        with contextlib.suppress(StopConsumer):  # as ChatConsumer._run ends a socket
            await consumers.dispatch_many([frames, events], consumer.dispatch)
        return weakref.ref(consumer)

    gc.collect()
    gc.disable()
    try:
        ref = await run()
        await asyncio.sleep(0)  # the cancelled source's task finishes its callbacks
        assert (ref() is None) is break_cycles
    finally:
        gc.enable()
        gc.collect()


async def test_a_message_handled_at_once_goes_before_the_loops_next_even_when_its_send_waits():
    """`_Turns.handle_now` (a relayed delta taken outside the socket's loop): one whose send ends at once
    is done on return; one whose send waits (uvicorn under flow control) holds the loop's next message
    back until it is written; and a failure ends the loop with its exception, with nothing else to wake it."""
    from conversations import consumers

    frames: asyncio.Queue = asyncio.Queue()
    handled: list[int] = []

    async def dispatch(message):
        handled.append(message["n"])

    async def write(n, gate=None):
        if gate is not None:
            await gate
        handled.append(n)

    turns = consumers._Turns(dispatch)
    loop = asyncio.ensure_future(consumers.dispatch_many([frames.get], dispatch, turns))
    await asyncio.sleep(0)
    assert turns.free()
    turns.handle_now(write(1))
    assert handled == [1] and turns.free()  # done before `handle_now` returned
    gate = asyncio.get_running_loop().create_future()
    turns.handle_now(write(2, gate))
    assert not turns.free()
    frames.put_nowait({"n": 3})
    await asyncio.sleep(0.05)
    assert handled == [1]  # the loop's next message waits for the write in progress
    gate.set_result(None)
    for _ in range(100):
        if handled == [1, 2, 3]:
            break
        await asyncio.sleep(0.01)
    assert handled == [1, 2, 3] and turns.free()

    async def broken():
        raise ValueError("the socket is gone")

    turns.handle_now(broken())
    assert not turns.free()
    with pytest.raises(ValueError, match="the socket is gone"):
        await asyncio.wait_for(loop, 5)


async def test_a_message_offered_while_the_lock_passes_to_a_waiting_source_waits_its_turn():
    """A handler ends and releases the lock to the other source's task, which holds a message taken
    before: until that task runs, the lock reads free. A message offered in between must not go first."""
    from conversations import consumers

    frames: asyncio.Queue = asyncio.Queue()
    events: asyncio.Queue = asyncio.Queue()
    handled: list[str] = []
    gate = asyncio.get_running_loop().create_future()

    async def dispatch(message):
        if message["n"] == "slow":
            await gate
        handled.append(message["n"])

    async def write(n):
        handled.append(n)

    def offer():  # what the layer does with a delta: handled at once if the socket is free, else queued
        if turns.free():
            turns.handle_now(write("offered"))
        else:
            events.put_nowait({"n": "offered"})

    turns = consumers._Turns(dispatch)
    loop = asyncio.ensure_future(consumers.dispatch_many([frames.get, events.get], dispatch, turns))
    frames.put_nowait({"n": "slow"})
    await asyncio.sleep(0.01)
    events.put_nowait({"n": "queued"})  # taken by its task, which waits for the lock
    await asyncio.sleep(0.01)
    gate.set_result(None)  # the slow handler's task runs next, ends, and hands the lock over...
    asyncio.get_running_loop().call_soon(offer)  # ...and this runs before the task it handed it to
    for _ in range(100):
        if len(handled) == 3:
            break
        await asyncio.sleep(0.01)
    assert handled == ["slow", "queued", "offered"]
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop


@pytest.mark.parametrize("direct", [True, False])
async def test_a_socket_takes_its_replys_deltas_at_once_when_it_has_nothing_in_hand(
    alice, settings, monkeypatch, direct
):
    from conversations.consumers import ChatConsumer

    monkeypatch.setattr(ChatConsumer, "direct_deltas", direct)
    taken = 0
    take = ChatConsumer.take_delta

    def counted(self, event):
        nonlocal taken
        took = take(self, event)
        taken += took
        return took

    monkeypatch.setattr(ChatConsumer, "take_delta", counted)
    settings.CHAT_OFFLINE_WORD_DELAY = 0.003
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("Hello")
    start = await ws.until("start")
    end = await ws.until("end")
    assert end["status"] == "complete" and ws.text_of(start["message_id"]) == end["content"]
    deltas = [f for f in ws.frames if f["type"] == "delta"]
    assert [d["offset"] for d in deltas] == sorted({d["offset"] for d in deltas})
    if direct:
        assert taken >= len(deltas) - 2  # all, but for any that met the socket busy with a frame
    else:
        assert taken == 0
    await ws.close()


async def test_a_real_socket_closes_cleanly_through_its_loop(alice, caplog):
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    assert ok
    assert await ws.recv() == {"type": "state", "generating": None}
    with caplog.at_level(logging.ERROR):
        await ws.close()  # the disconnect frame, then the consumer's end (raised here if it failed)
    assert ws.c.future.done() and not ws.c.future.cancelled() and ws.c.future.exception() is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_after_a_handler_raises_the_socket_loop_handles_nothing_more():
    from channels.exceptions import StopConsumer

    from conversations.consumers import dispatch_many

    frames, events = Source("frames", 1, 0.001), Source("events", 5, 0.005)
    handled: list[dict] = []

    async def dispatch(message):
        if message["source"] == "frames":
            await asyncio.sleep(0.03)  # the events' first message arrives and waits meanwhile
            raise StopConsumer
        handled.append(message)

    with pytest.raises(StopConsumer):
        await asyncio.wait_for(dispatch_many([frames, events], dispatch), 10)
    assert handled == []


async def test_a_source_failing_lets_the_handler_in_progress_finish(caplog):
    from conversations.consumers import dispatch_many

    frames = Source("frames", 1, 0.001)
    finished: list[dict] = []

    async def failing_events():
        await asyncio.sleep(0.01)
        raise RuntimeError("the layer failed")

    async def dispatch(message):
        await asyncio.sleep(0.05)  # a send in progress when the other source fails
        finished.append(message)

    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="the layer failed"):
        await asyncio.wait_for(dispatch_many([frames, failing_events], dispatch), 10)
    assert finished == [{"source": "frames", "n": 0}]
    # The failure is raised once, to the consumer: not logged as well.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
