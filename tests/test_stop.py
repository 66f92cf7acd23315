"""`stop` always lands: stored (durable) and acknowledged, from any socket in any process, even one
sent a moment after `send` while the reply's process is still setting up its listener."""

from __future__ import annotations

import os
import time

import pytest
from asgiref.sync import sync_to_async

from conversations import services
from conversations.models import Message
from tests.conftest import open_socket
from tests.factories import make_conversation
from tests.fakes.provider import Reply
from tests.wsclient import connect_live

pytestmark = pytest.mark.django_db(transaction=True)

LONG = "word " * 3000
# At one token ("word ", 5 characters) every 5 ms, a second of streaming is at most 1000 characters: a
# stop that lands "within a second" keeps at most that many more than the client had when it asked.
# (Wall-clock bounds are generous: the test machine is shared.)
SECOND_OF_TEXT = 1000
ON_REDIS = os.environ.get("DATABASE_URL", "").startswith("postgres") and bool(os.environ.get("REDIS_URL"))


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


async def test_it_acknowledges_stop_with_the_reply_it_stops(alice, fake_provider):
    fake_provider.script(Reply(text=LONG, token_delay=0.005))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("long please")
    start = await ws.until("start")
    await ws.until("delta")
    await ws.send({"type": "stop"})
    ack = await ws.until("stopping")
    assert ack == {"type": "stopping", "message_id": start["message_id"]}
    end = await ws.until("end", timeout=5)
    assert end["status"] == "stopped"
    await ws.close()


async def test_it_answers_stop_with_nothing_running(alice, fake_provider):
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send({"type": "stop"})
    assert await ws.until("stopping") == {"type": "stopping", "message_id": None}
    await ws.close()


async def test_a_stored_stop_reaches_the_reply_when_its_message_is_lost(alice, fake_provider):
    """Another process stored the stop, but its pub/sub message never arrived: the reply's own
    loop reads the flag and ends `stopped` within about a flush interval."""
    fake_provider.script(Reply(text=LONG, token_delay=0.005))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("long please")
    start = await ws.until("start")
    await ws.until("delta")
    asked = time.monotonic()
    had = len(ws.text_of(start["message_id"]))
    assert await sync_to_async(services.reply_stop_request)(conversation_id=conv.pk) == start["message_id"]
    end = await ws.until("end", timeout=5)
    took = time.monotonic() - asked
    assert end["status"] == "stopped" and 0 < len(end["content"]) < len(LONG)
    assert len(end["content"]) - had <= SECOND_OF_TEXT and took < 3, f"the stop took {took:.2f}s to land"
    row = await sync_to_async(Message.objects.get)(pk=start["message_id"])
    assert (row.status, row.content) == ("stopped", end["content"])
    await ws.close()


async def test_a_stop_stored_before_the_reply_begins_calls_no_provider(alice, fake_provider, monkeypatch):
    """The row exists (committed by `send`) before its process starts the reply: a stop stored in
    that moment is read when the request is built, and the provider is never called."""
    fake_provider.script(Reply(text=LONG, token_delay=0.005))
    conv = await sync_to_async(make_conversation)(alice)
    original = services.message_send

    def send_then_stop(**kwargs):
        sent = original(**kwargs)
        services.reply_stop_request(conversation_id=sent.message.conversation_id)  # as from another process
        return sent

    monkeypatch.setattr(services, "message_send", send_then_stop)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("stop me before I start")
    end = await ws.until("end", timeout=5)
    assert end["status"] == "stopped" and end["content"] == ""
    assert fake_provider.requests == []
    await ws.close()


@pytest.mark.slow
@pytest.mark.skipif(not ON_REDIS, reason="needs PostgreSQL and Redis shared by several processes")
async def test_a_stop_right_after_send_from_the_other_process_lands_within_a_second(
    alice, fake_provider, live_server_factory
):
    env = {
        "OPENAI_API_KEY": "x",
        "OPENAI_BASE_URL": fake_provider.openai_base_url,
        "CHAT_DEFAULT_MODEL": "openai:gpt-test",
    }
    a, b = live_server_factory(**env), live_server_factory(**env)
    # Warm up: a process's first reply imports the provider SDK, which holds its event loop for a
    # while on a busy machine; that is start-up cost, not the stop's.
    fake_provider.script(Reply(text="warm"))
    warm = await sync_to_async(make_conversation)(alice)
    ws = await connect_live(a, alice, warm.pk)
    await ws.recv()
    await ws.send_message("warm up")
    await ws.until("end", timeout=20)
    await ws.close()
    for attempt in range(3):  # the race is narrow: try it a few times, every one must land
        fake_provider.script(Reply(text=LONG, token_delay=0.005))
        conv = await sync_to_async(make_conversation)(alice)
        on_a = await connect_live(a, alice, conv.pk)
        on_b = await connect_live(b, alice, conv.pk)
        await on_a.recv()
        await on_b.recv()
        await on_a.send_message(f"long one {attempt}")
        await on_b.until("message")  # committed: B learns of it, and stops it at once
        asked = time.monotonic()
        await on_b.send({"type": "stop"})
        ack = await on_b.until("stopping")
        assert ack["message_id"] is not None
        ends = [await ws.until("end", timeout=10) for ws in (on_b, on_a)]
        took = time.monotonic() - asked
        assert ends[0] == ends[1] and ends[0]["status"] == "stopped", ends[0]["status"]
        assert ends[0]["message_id"] == ack["message_id"]
        assert len(ends[0]["content"]) <= SECOND_OF_TEXT, f"attempt {attempt}: the reply went on after the stop"
        assert took < 5, f"attempt {attempt}: the stop took {took:.2f}s to land"
        await on_a.close()
        await on_b.close()
