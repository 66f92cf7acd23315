"""A deploy is not a crash: SIGTERM to a daphne process lets its replies finish (up to
CHAT_SHUTDOWN_GRACE), then stores them `interrupted` at once; sockets elsewhere see every `end`.
And a process that starts sweeps the rows a dead one left `streaming`. Each under uvicorn too (the
README's production option: the same drain and sweep, from ASGI's lifespan events)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from conversations.models import Message
from tests.factories import make_conversation
from tests.fakes.provider import Reply
from tests.wsclient import connect_live

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ON_REDIS = os.environ.get("DATABASE_URL", "").startswith("postgres") and bool(os.environ.get("REDIS_URL"))
two_processes = pytest.mark.skipif(not ON_REDIS, reason="needs PostgreSQL and Redis shared by several processes")
# The process told to stop: daphne (`make run`) or uvicorn (the production option).
servers = pytest.mark.parametrize("server", ["daphne", "uvicorn"])


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def provider_env(fake_provider, **extra):
    return {
        "OPENAI_API_KEY": "x",
        "OPENAI_BASE_URL": fake_provider.openai_base_url,
        "CHAT_DEFAULT_MODEL": "openai:gpt-test",
        **extra,
    }


async def row(message_id):
    return await sync_to_async(Message.objects.get)(pk=message_id)


async def exited(server, timeout):
    deadline = time.monotonic() + timeout
    while server.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return server.proc.poll() is not None


@two_processes
@servers
async def test_sigterm_lets_a_running_reply_finish_and_the_other_process_sees_it(
    alice, fake_provider, live_server_factory, server
):
    text = " ".join(f"w{i}" for i in range(200))  # about 3 s at 15 ms a token
    fake_provider.script(Reply(text=text, token_delay=0.015))
    a = live_server_factory(server=server, **provider_env(fake_provider, CHAT_SHUTDOWN_GRACE="30"))
    b = live_server_factory(**provider_env(fake_provider))
    conv = await sync_to_async(make_conversation)(alice)
    on_a = await connect_live(a, alice, conv.pk)
    on_b = await connect_live(b, alice, conv.pk)
    await on_a.recv()
    await on_b.recv()
    await on_a.send_message("a long one")
    start = await on_b.until("start")
    await on_b.until("delta")

    a.proc.send_signal(signal.SIGTERM)
    # A's socket is closed at once (4012 from daphne, 1012 from uvicorn: reconnect elsewhere), and A
    # takes no new ones.
    with pytest.raises(ConnectionError):
        await on_a.until("end", timeout=5)
    await asyncio.sleep(0.3)
    with pytest.raises(Exception):  # noqa: B017 - refused: connection refused or handshake closed
        again = await connect_live(a, alice, conv.pk)
        await again.recv(timeout=2)
    # The reply finishes in A all the same, and B sees it through to its end.
    end = await on_b.until("end", timeout=20, message_id=start["message_id"])
    assert (end["status"], end["content"]) == ("complete", text)
    assert on_b.text_of(start["message_id"]) == text
    assert await exited(a, 10), f"{server} did not exit after its replies finished"
    assert a.proc.returncode == 0 or a.proc.returncode == -signal.SIGTERM or a.proc.returncode is not None
    stored = await row(start["message_id"])
    assert (stored.status, stored.content) == ("complete", text)
    await on_b.close()


@two_processes
@servers
async def test_sigterm_interrupts_a_reply_still_running_after_the_grace(
    alice, fake_provider, live_server_factory, server
):
    text = "word " * 4000  # about 40 s: far longer than the grace
    fake_provider.script(Reply(text=text, token_delay=0.01))
    a = live_server_factory(server=server, **provider_env(fake_provider, CHAT_SHUTDOWN_GRACE="1"))
    b = live_server_factory(**provider_env(fake_provider))
    conv = await sync_to_async(make_conversation)(alice)
    on_a = await connect_live(a, alice, conv.pk)
    on_b = await connect_live(b, alice, conv.pk)
    await on_a.recv()
    await on_b.recv()
    await on_a.send_message("a very long one")
    start = await on_b.until("start")
    await on_b.until("delta")

    a.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    # Interrupted at the grace, not after CHAT_STALE_AFTER (10 s) plus a janitor's sweep.
    end = await on_b.until("end", timeout=8, message_id=start["message_id"])
    took = time.monotonic() - sent
    assert end["status"] == "interrupted"
    assert 0 < len(end["content"]) < len(text) and text.startswith(end["content"])
    assert took < 6, f"interrupted after {took:.1f}s (grace 1 s)"
    assert on_b.text_of(start["message_id"]) == end["content"]
    stored = await row(start["message_id"])
    assert (stored.status, stored.content) == ("interrupted", end["content"])  # all of it, not a second behind
    assert await exited(a, 10)
    await on_b.close()


@servers
async def test_sigterm_on_a_lone_process_leaves_no_reply_streaming(alice, fake_provider, live_server_factory, server):
    fake_provider.script(Reply(text="word " * 4000, token_delay=0.01))
    a = live_server_factory(server=server, **provider_env(fake_provider, CHAT_SHUTDOWN_GRACE="1"))
    conv = await sync_to_async(make_conversation)(alice)
    ws = await connect_live(a, alice, conv.pk)
    await ws.recv()
    await ws.send_message("long")
    start = await ws.until("start")
    await ws.until("delta")
    a.proc.send_signal(signal.SIGTERM)
    assert await exited(a, 15)
    stored = await row(start["message_id"])
    assert stored.status == "interrupted" and stored.content
    await ws.close()


@servers
async def test_a_process_sweeps_stale_replies_when_it_starts(alice, live_server_factory, server):
    """A crash of the only process left a row `streaming`: the restarted process marks it
    `interrupted` by itself, before any socket connects."""
    conv = await sync_to_async(make_conversation)(alice)

    def leave_a_stale_row():
        reply = Message.objects.create(
            conversation=conv, role="assistant", status="streaming", content="half a repl", model="offline:demo"
        )
        Message.objects.filter(pk=reply.pk).update(updated_at=timezone.now() - dt.timedelta(minutes=5))
        return reply

    reply = await sync_to_async(leave_a_stale_row)()
    live_server_factory(server=server)
    deadline = time.monotonic() + 10
    while (await row(reply.pk)).status == "streaming" and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    stored = await row(reply.pk)
    assert (stored.status, stored.content) == ("interrupted", "half a repl")
