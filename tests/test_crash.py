"""Crash safety with real daphne processes: kill -9 mid-reply, restart, and the reply is `interrupted`.

The reply keeps what was flushed (about a second behind the stream), the user's message is kept,
and the conversation is usable again: never `streaming` forever, whichever process looks first.
Runs on SQLite (each process its own in-memory layer) and on PostgreSQL + Redis.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async

from conversations.models import Message
from tests.factories import make_conversation
from tests.fakes.provider import Reply
from tests.wsclient import connect_live

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Users are made per test: the production hasher's million rounds would dominate the run."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


STALE_AFTER = 2.0
FLUSH_INTERVAL = 1.0  # production's default: the bound on what a crash may lose
LONG = " ".join(f"w{i:03d}" for i in range(600))


def env(fake_provider, stale_after: float = STALE_AFTER) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "x",
        "OPENAI_BASE_URL": fake_provider.openai_base_url,
        "CHAT_DEFAULT_MODEL": "openai:gpt-test",
        "CHAT_STALE_AFTER": str(stale_after),
        "CHAT_FLUSH_INTERVAL": str(FLUSH_INTERVAL),
    }


async def rows_of(conversation):
    return await sync_to_async(lambda: list(Message.objects.filter(conversation=conversation).order_by("id")))()


async def stream_then_kill(server, user, conversation, *, seconds: float):
    """Send a message on `server`, read deltas for `seconds`, kill -9 the server.

    Returns (reply id, text the client had at the kill, text it had FLUSH_INTERVAL + slack before).
    """
    ws = await connect_live(server, user, conversation.pk)
    assert (await ws.recv())["type"] == "state"
    await ws.send_message("tell me a long story")
    start = await ws.until("start")
    seen: list[tuple[float, str]] = []  # (arrival time, text so far)
    text = ""
    began = None  # the clock starts at the first token (a cold process imports the SDK first)
    while began is None or time.monotonic() - began < seconds:
        frame = await ws.recv(timeout=10)
        if frame["type"] == "delta":
            began = began or time.monotonic()
            assert frame["offset"] == len(text)
            text += frame["text"]
            seen.append((time.monotonic(), text))
    killed_at = time.monotonic()
    server.kill()
    await ws.close()
    # Anything the client had this long before the kill was flushed (one interval, plus slack for a
    # busy machine): what a crash loses is bounded, whatever the exact moment of the kill.
    settled = [t for at, t in seen if at <= killed_at - FLUSH_INTERVAL - 1.5]
    return start["message_id"], text, (settled[-1] if settled else "")


async def test_it_marks_a_reply_interrupted_after_kill_9_keeping_the_flushed_text(
    alice, fake_provider, live_server_factory
):
    # Stale after 4 s: the surviving process's first sweep (4 s after the socket connects) comes
    # well after the socket's 2 s fallback to the stored text, so the order below is certain.
    stale_after = 4.0
    fake_provider.script(Reply(text=LONG, token_delay=0.01), Reply(text="after the crash"))
    conv = await sync_to_async(make_conversation)(alice)
    first = await sync_to_async(live_server_factory)(**env(fake_provider, stale_after))
    survivor = await sync_to_async(live_server_factory)(**env(fake_provider, stale_after))  # idle
    reply_id, seen, settled = await stream_then_kill(first, alice, conv, seconds=2.5)

    user, reply = await rows_of(conv)
    assert (user.role, user.content) == ("user", "tell me a long story")  # stored before the provider ran
    assert reply.pk == reply_id and reply.status == "streaming"  # nobody has noticed yet
    assert reply.content and seen.startswith(reply.content)  # what was flushed, exactly as streamed
    assert reply.content.startswith(settled), (len(reply.content), len(settled), len(seen))

    # At once, on the surviving process: the reply is not stale yet, so the socket is shown the
    # stored text (nobody answers for it), then that process's own sweep ends it.
    ws = await connect_live(survivor, alice, conv.pk)
    state = await ws.recv(timeout=10)
    assert state == {
        "type": "state",
        "generating": {"message_id": reply_id, "offset": len(reply.content), "text": reply.content},
    }
    end = await ws.until("end", timeout=2 * stale_after + 5)
    assert (end["message_id"], end["status"], end["content"]) == (reply_id, "interrupted", reply.content)
    assert (await rows_of(conv))[1].status == "interrupted"

    # The conversation is not stuck: the next message gets a reply.
    await ws.send_message("are you back?")
    end = await ws.until("end", timeout=10)
    assert (end["status"], end["content"]) == ("complete", "after the crash")
    await ws.close()


async def test_a_socket_connecting_after_the_stale_time_gets_the_interrupted_reply_at_once(
    alice, fake_provider, live_server_factory
):
    fake_provider.script(Reply(text=LONG, token_delay=0.01))
    conv = await sync_to_async(make_conversation)(alice)
    first = await sync_to_async(live_server_factory)(**env(fake_provider))
    reply_id, seen, settled = await stream_then_kill(first, alice, conv, seconds=1.5)
    stored = (await rows_of(conv))[1].content
    await asyncio.sleep(STALE_AFTER + 0.5)

    second = await sync_to_async(live_server_factory)(**env(fake_provider))
    ws = await connect_live(second, alice, conv.pk)
    assert await ws.recv(timeout=5) == {"type": "state", "generating": None}
    # The new process sweeps at start-up, so the reply is usually interrupted before the socket
    # connects (and the page shows it so); else the connect-time sweep sends its `end` at once.
    try:
        end = await ws.recv(timeout=1.0)
    except TimeoutError:
        end = None  # swept at start-up, before the socket came
    if end is not None:
        assert (end["type"], end["message_id"], end["status"], end["content"]) == (
            "end",
            reply_id,
            "interrupted",
            stored,
        )
    row = (await rows_of(conv))[1]
    assert (row.status, row.content) == ("interrupted", stored)
    assert seen.startswith(stored)
    await ws.close()

    # The page, rendered from the database, shows what was kept.
    page = await sync_to_async(page_of)(alice, conv)
    assert "interrupted" in page.lower()
    assert stored.split()[-1] in page


def page_of(user, conversation) -> str:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client.get(conversation.get_absolute_url()).content.decode()
