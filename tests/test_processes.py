"""Several daphne processes sharing PostgreSQL and Redis: every socket, in any process, sees the same reply.

These need the production topology, so they run in CI's second pass (DATABASE_URL and REDIS_URL
set) and are skipped, saying why, on SQLite with the in-memory layer.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid

import pytest
from asgiref.sync import sync_to_async

from conversations.models import Message
from tests.factories import make_conversation, make_user
from tests.fakes.provider import Reply
from tests.wsclient import connect_live

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.skipif(
        not (os.environ.get("DATABASE_URL", "").startswith("postgres") and os.environ.get("REDIS_URL")),
        reason="needs PostgreSQL and Redis shared by several processes: set DATABASE_URL and REDIS_URL",
    ),
]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Users are made per test: the production hasher's million rounds would dominate the run."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


TEXT = "Across processes: " + " ".join(f"t{i}" for i in range(300)) + " ünï 漢字 🎉 end."
RELEVANT = {"message", "start", "delta", "end", "error"}


# Two daphne processes, as `make run` and the README deploy them; and uvicorn (the README's production
# option) beside daphne, each side of every cross-process case.
@pytest.fixture(params=[("daphne", "daphne"), ("uvicorn", "daphne")], ids=["daphne+daphne", "uvicorn+daphne"])
def two_servers(request, fake_provider, live_server_factory):
    env = {
        "OPENAI_API_KEY": "x",
        "OPENAI_BASE_URL": fake_provider.openai_base_url,
        "CHAT_DEFAULT_MODEL": "openai:gpt-test",
        "CHAT_RATE_LIMIT": "1000/m",
    }
    first, second = request.param
    return live_server_factory(server=first, **env), live_server_factory(server=second, **env)


def stream(ws, message_id):
    return [f for f in ws.frames if f["type"] in RELEVANT and f.get("message_id", message_id) == message_id]


async def rows_of(conversation):
    return await sync_to_async(lambda: list(Message.objects.filter(conversation=conversation).order_by("id")))()


async def test_two_processes_give_one_socket_each_identical_streams(alice, fake_provider, two_servers):
    a, b = two_servers
    fake_provider.script(Reply(text=TEXT, token_delay=0.003), Reply(text=TEXT[::-1], token_delay=0.003))
    conv = await sync_to_async(make_conversation)(alice)
    on_a = await connect_live(a, alice, conv.pk)
    on_b = await connect_live(b, alice, conv.pk)
    for ws in (on_a, on_b):
        assert await ws.recv() == {"type": "state", "generating": None}

    for sender, text in ((on_a, TEXT), (on_b, TEXT[::-1])):  # a reply run by each process in turn
        await sender.send_message(f"please send {len(text)} characters")
        ends = [await ws.until("end", timeout=20) for ws in (on_a, on_b)]
        message_id = ends[0]["message_id"]
        assert ends[0] == ends[1]
        assert ends[0]["status"] == "complete" and ends[0]["content"] == text
        # The same frames in the same order; deltas that waited in a socket's queue may leave it joined
        # (conversations/layers/coalesce.py), so each socket's deltas are compared by the text they make.
        for ws in (on_a, on_b):
            frames = stream(ws, message_id)
            offsets = [f["offset"] for f in frames if f["type"] == "delta"]
            assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
            assert len(offsets) > 20  # relayed as it came, not in one block
        assert [f for f in stream(on_a, message_id) if f["type"] != "delta"] == [
            f for f in stream(on_b, message_id) if f["type"] != "delta"
        ]
        for ws in (on_a, on_b):
            assert ws.text_of(message_id) == text
    # The user messages reached both sockets too, once each.
    for ws in (on_a, on_b):
        assert [f["message"]["content"] for f in ws.frames if f["type"] == "message"] == [
            f"please send {len(TEXT)} characters",
            f"please send {len(TEXT)} characters",
        ]
    await on_a.close()
    await on_b.close()


async def test_a_socket_joining_mid_reply_on_the_other_process_gets_the_exact_text(alice, fake_provider, two_servers):
    a, b = two_servers
    fake_provider.script(Reply(text=TEXT, token_delay=0.01))
    conv = await sync_to_async(make_conversation)(alice)
    writer = await connect_live(a, alice, conv.pk)
    await writer.recv()
    await writer.send_message("go")
    start = await writer.until("start")
    for _ in range(30):
        await writer.until("delta")
    late = await connect_live(b, alice, conv.pk)
    state = await late.recv(timeout=5)
    # Asked of the process running the reply: its text so far, not the database's older copy.
    assert state["type"] == "state" and state["generating"]["message_id"] == start["message_id"]
    assert TEXT.startswith(state["generating"]["text"]) and len(state["generating"]["text"]) > 0
    end = await late.until("end", timeout=20)
    assert late.text_of(start["message_id"]) == TEXT == end["content"]  # no gap, no repeat
    await writer.close()
    await late.close()


async def test_a_reconnect_to_the_other_process_resumes_without_loss_or_repeat(alice, fake_provider, two_servers):
    a, b = two_servers
    fake_provider.script(Reply(text=TEXT, token_delay=0.01))
    conv = await sync_to_async(make_conversation)(alice)
    ws = await connect_live(a, alice, conv.pk)
    await ws.recv()
    await ws.send_message("go")
    start = await ws.until("start")
    for _ in range(20):
        await ws.until("delta")
    had = ws.text_of(start["message_id"])
    await ws.close()
    await asyncio.sleep(0.3)  # tokens keep coming while the tab is away

    again = await connect_live(b, alice, conv.pk)
    state = await again.recv(timeout=5)
    assert state["generating"]["message_id"] == start["message_id"]
    await again.send({"type": "resume", "message_id": start["message_id"], "offset": len(had)})
    resumed = await again.until("delta", offset=len(had))
    assert TEXT.startswith(had + resumed["text"])
    end = await again.until("end", timeout=20)
    assert again.text_of(start["message_id"]) == TEXT == end["content"]
    await again.close()


async def test_stop_resend_and_busy_work_from_the_other_process(alice, fake_provider, two_servers):
    a, b = two_servers
    fake_provider.script(Reply(text="word " * 2000, token_delay=0.005))
    conv = await sync_to_async(make_conversation)(alice)
    on_a = await connect_live(a, alice, conv.pk)
    on_b = await connect_live(b, alice, conv.pk)
    await on_a.recv()
    await on_b.recv()
    client_id = str(uuid.uuid4())
    await on_a.send_message("long one", client_id=client_id)
    first = await on_b.until("message")
    start = await on_b.until("start")
    await on_b.until("delta")

    await on_b.send_message("again", client_id=client_id)  # a resend, through the other process
    assert await on_b.until("message") == first
    await on_b.send_message("meanwhile")  # a new message while A writes
    assert (await on_b.until("error"))["code"] == "busy"

    await on_b.send({"type": "stop"})  # A runs the reply; B asks it to stop
    ends = [await ws.until("end", timeout=10) for ws in (on_a, on_b)]
    assert ends[0] == ends[1] and ends[0]["status"] == "stopped"
    assert 0 < len(ends[0]["content"]) < len("word " * 2000)
    assert on_a.text_of(start["message_id"]) == ends[0]["content"] == on_b.text_of(start["message_id"])
    rows = await rows_of(conv)
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "stopped")]
    assert rows[1].content == ends[0]["content"]
    await on_a.close()
    await on_b.close()


async def test_the_message_rate_is_counted_across_processes(fake_provider, live_server_factory):
    # A user id no other test run uses: counters live in a Redis that other runs may share.
    alice = await sync_to_async(make_user)("alice", id=random.randint(10**6, 10**9))
    env = {
        "OPENAI_API_KEY": "x",
        "OPENAI_BASE_URL": fake_provider.openai_base_url,
        "CHAT_DEFAULT_MODEL": "openai:gpt-test",
        "CHAT_RATE_LIMIT": "3/h",
    }
    a, b = live_server_factory(**env), live_server_factory(**env)
    conv = await sync_to_async(make_conversation)(alice)
    sockets = [await connect_live(server, alice, conv.pk) for server in (a, b)]
    for ws in sockets:
        await ws.recv()
    for n, ws in enumerate([sockets[0], sockets[1], sockets[0]]):
        await ws.send_message(f"message {n}")
        start = await ws.until("start")
        for each in sockets:  # both have seen it end before the next is sent
            await each.until("end", timeout=10, message_id=start["message_id"])
    await sockets[1].send_message("one too many")
    error = await sockets[1].until("error")
    assert error["code"] == "rate_limited" and 0 < error["retry_after"] <= 3600
    assert [m.content for m in await rows_of(conv) if m.role == "user"] == ["message 0", "message 1", "message 2"]
    for ws in sockets:
        await ws.close()


async def test_a_switch_on_one_process_reaches_the_socket_on_the_other_while_a_branch_streams(
    alice, fake_provider, two_servers
):
    a, b = two_servers
    conv = await sync_to_async(make_conversation)(alice)
    on_a = await connect_live(a, alice, conv.pk)
    on_b = await connect_live(b, alice, conv.pk)
    for ws in (on_a, on_b):
        await ws.recv()
    fake_provider.script(Reply(text="first answer"), Reply(text="edited answer"))
    await on_a.send_message("first question")
    first = (await on_b.until("message"))["message"]
    await on_b.until("end", timeout=20)
    await on_a.send(
        {"type": "send", "client_id": str(uuid.uuid4()), "content": "edited question", "edit_of": first["id"]}
    )
    edited = await on_b.until("message")
    assert edited["siblings"] == [first["id"], edited["message"]["id"]]
    await on_b.until("end", timeout=20)

    # A reply streams on the edited branch (run by process B) while process A's socket switches away.
    fake_provider.script(Reply(text=TEXT, token_delay=0.01))
    await on_b.send_message("go on")
    start = await on_b.until("start", timeout=10)
    await on_a.until("delta", timeout=10, message_id=start["message_id"])
    await on_a.send({"type": "switch", "message_id": first["id"]})
    for ws in (on_a, on_b):
        path = await ws.until("path", timeout=10)
        assert [m["content"] for m in path["messages"]] == ["first question", "first answer"]
        assert path["messages"][0]["siblings"] == [first["id"], edited["message"]["id"]]
    # Switching back shows the running reply where it was, and it ends whole on both sockets.
    await on_b.send({"type": "switch", "message_id": edited["message"]["id"]})
    path = await on_b.until("path", timeout=20)
    assert path["messages"][-1]["id"] == start["message_id"]
    path = await on_a.until("path", timeout=20)
    assert path["messages"][-1]["id"] == start["message_id"]
    for ws in (on_a, on_b):
        end = await ws.until("end", timeout=30)
        assert end["content"] == TEXT and ws.text_of(start["message_id"]) == TEXT
    await on_a.close()
    await on_b.close()
