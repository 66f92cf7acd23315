"""The websocket's edges: paths that are not a conversation, binary frames, sockets per user, and a
channel layer that fails during a send."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from conversations.models import Message
from tests.conftest import open_socket, session_cookie
from tests.factories import make_conversation
from tests.fakes.provider import Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.mark.parametrize("path", ["/ws/conversations/", "/ws/conversations/not-a-uuid/", "/ws/", "/ws/other/x/"])
async def test_it_refuses_a_path_that_is_not_a_conversation(alice, path):
    from chatsite.asgi import application

    cookie = await sync_to_async(session_cookie)(alice)
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost"), (b"cookie", f"sessionid={cookie}".encode())]
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=5)  # before: ValueError "No route found" (a 500)
    assert not connected
    await communicator.disconnect()


async def test_it_refuses_binary_frames_as_invalid(alice, fake_provider):
    fake_provider.script(Reply(text="never"))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    frame = b'{"type": "send", "client_id": "0b5b1a2e-4f0e-4b9e-9a7c-1f3f7f9d2c11", "content": "hi"}'
    await ws.c.send_to(bytes_data=frame)
    error = await ws.until("error")
    assert error["code"] == "invalid" and "binary" in error["message"]
    assert await ws.c.receive_nothing(0.3)
    assert await sync_to_async(Message.objects.filter(conversation=conv).count)() == 0
    assert fake_provider.requests == []
    await ws.close()


async def test_it_limits_the_sockets_a_user_holds_open(alice, bob, settings):
    settings.CHAT_MAX_SOCKETS_PER_USER = 3
    conv = await sync_to_async(make_conversation)(alice)
    sockets = []
    for _ in range(3):
        ok, ws = await open_socket(alice, conv.pk)
        assert ok
        sockets.append(ws)
    ok, extra = await open_socket(alice, conv.pk)
    assert not ok  # the fourth is refused
    await extra.close()
    # Another user is not affected.
    bobs = await sync_to_async(make_conversation)(bob)
    ok, ws = await open_socket(bob, bobs.pk)
    assert ok
    await ws.close()
    # Closing one makes room for one.
    await sockets.pop().close()
    ok, again = await open_socket(alice, conv.pk)
    assert ok
    sockets.append(again)
    for ws in sockets:
        await ws.close()


async def test_a_socket_whose_consumer_fails_unexpectedly_is_counted_out(alice, settings, monkeypatch):
    """A bug's exception ends the consumer without `disconnect`: its socket still leaves the user's count
    (before: the count leaked, and after CHAT_MAX_SOCKETS_PER_USER such failures the user's sockets were
    all refused for an hour)."""
    from conversations.consumers import ChatConsumer

    settings.CHAT_MAX_SOCKETS_PER_USER = 1
    conv = await sync_to_async(make_conversation)(alice)

    async def broken(self, text_data=None, bytes_data=None):
        raise RuntimeError("a bug")

    monkeypatch.setattr(ChatConsumer, "receive", broken)
    ok, ws = await open_socket(alice, conv.pk)
    assert ok and (await ws.recv())["type"] == "state"
    await ws.send({"type": "stop"})
    with pytest.raises(RuntimeError, match="a bug"):
        await ws.c.wait(timeout=5)
    monkeypatch.undo()
    ok, again = await open_socket(alice, conv.pk)
    assert ok  # the failed socket's count was given back
    await again.close()


async def test_a_layer_failure_during_a_send_loses_no_reply(alice, fake_provider, monkeypatch):
    """Publishing the user's message fails (Redis down, say): the reply still runs and is stored, the
    socket says the layer failed and stays open (before: the publish raised before the reply task
    started, leaving a `streaming` row with nothing behind it and closing the socket with 1011)."""
    fake_provider.script(Reply(text="still written", token_delay=0.01))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    layer = get_channel_layer()
    original = layer.group_send

    async def failing(group, message):
        if message.get("type") == "chat.message":
            raise ConnectionError("Redis went away")
        return await original(group, message)

    monkeypatch.setattr(layer, "group_send", failing)
    await ws.send_message("hello")
    message = await ws.until("message")
    assert message["message"]["content"] == "hello"
    error = await ws.until("error")
    assert error["code"] == "unavailable"
    end = await ws.until("end", timeout=10)
    assert (end["status"], end["content"]) == ("complete", "still written")
    rows = await sync_to_async(lambda: list(Message.objects.filter(conversation=conv).order_by("id")))()
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "complete")]
    # The socket is still open and working.
    await ws.send({"type": "stop"})
    assert (await ws.until("stopping"))["message_id"] is None
    await ws.close()


async def test_an_unexpected_failure_in_a_frame_is_an_error_not_a_closed_socket(alice, monkeypatch):
    from conversations import consumers

    async def broken(conversation_id):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(consumers, "_request_stop", broken)
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send({"type": "stop"})
    error = await ws.until("error")
    assert error["code"] == "unavailable" and "fire" not in error["message"]
    await asyncio.sleep(0.1)
    await ws.send({"type": "nonsense"})
    assert (await ws.until("error"))["code"] == "invalid"  # still open
    await ws.close()
