"""A socket follows its conversation and its session: a deleted thread answers `not_found` and closes
its sockets, a reply running in it still ends; logging out, deactivation or deletion of the user
closes their sockets (any process), and a send on a socket whose session ended stores nothing."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from asgiref.sync import sync_to_async
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client

from conversations.generation import registry
from conversations.models import Conversation, Message
from tests.conftest import open_socket, session_cookie
from tests.factories import make_conversation
from tests.fakes.provider import Reply
from tests.wsclient import connect_live

pytestmark = pytest.mark.django_db(transaction=True)
ON_REDIS = os.environ.get("DATABASE_URL", "").startswith("postgres") and bool(os.environ.get("REDIS_URL"))


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


async def closed_with(ws, timeout=5):
    """Read frames until the server closes the socket; its close code."""
    while True:
        output = await ws.c.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            return output.get("code")
        ws.frames.append(json.loads(output["text"]))


async def count(model, **filters):
    return await sync_to_async(model.objects.filter(**filters).count)()


# -- a deleted thread ----------------------------------------------------------------------------------
async def test_a_send_on_a_deleted_thread_answers_not_found(alice, fake_provider):
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await sync_to_async(Conversation.objects.filter(pk=conv.pk).delete)()  # no event: as if it was lost
    await ws.send_message("anyone there?")
    error = await ws.until("error")
    assert error["code"] == "not_found"  # before: DoesNotExist, a traceback and close 1011
    await ws.send({"type": "regenerate"})
    assert (await ws.until("error"))["code"] == "not_found"
    assert fake_provider.requests == []
    await ws.close()


async def test_deleting_a_thread_ends_its_reply_and_closes_its_sockets(alice, fake_provider):
    fake_provider.script(Reply(text="word " * 3000, token_delay=0.005))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    ok, other = await open_socket(alice, conv.pk)
    await ws.recv()
    await other.recv()
    await ws.send_message("long")
    start = await ws.until("start")
    await ws.until("delta")

    client = Client()
    await sync_to_async(client.force_login)(alice)
    response = await sync_to_async(client.post)(f"/conversations/{conv.pk}/delete/")
    assert response.status_code in (200, 204, 302)
    for socket in (ws, other):
        code = await closed_with(socket)
        assert code == 4404
        errors = [f for f in socket.frames if f["type"] == "error"]
        assert errors and errors[-1]["code"] == "not_found"
    # The reply stops at its next write: nothing runs on for a thread that is gone.
    for _ in range(50):
        if not registry.running:
            break
        await asyncio.sleep(0.1)
    assert not registry.running
    assert await count(Message, pk=start["message_id"]) == 0


async def test_a_reply_in_a_deleted_thread_still_sends_end(alice, fake_provider):
    fake_provider.script(Reply(text="word " * 3000, token_delay=0.005))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("long")
    start = await ws.until("start")
    await ws.until("delta")
    await sync_to_async(Conversation.objects.filter(pk=conv.pk).delete)()  # no group event
    end = await ws.until("end", timeout=5)  # before: the reply stopped silently, no `end`
    assert end["message_id"] == start["message_id"] and end["status"] == "stopped"
    await ws.close()


# -- the session -------------------------------------------------------------------------------------
async def test_logging_out_closes_the_users_open_sockets(alice, bob):
    conv = await sync_to_async(make_conversation)(alice)
    cookie = await sync_to_async(session_cookie)(alice)
    ok, ws = await open_socket(alice, conv.pk, cookie=cookie)
    assert ok
    await ws.recv()
    bobs = await sync_to_async(make_conversation)(bob)
    ok, bobs_ws = await open_socket(bob, bobs.pk)
    await bobs_ws.recv()

    client = Client()
    client.cookies["sessionid"] = cookie
    response = await sync_to_async(client.post)("/accounts/logout/")
    assert response.status_code == 302
    assert await closed_with(ws) == 4401
    assert await bobs_ws.c.receive_nothing(0.3)  # another user's socket stays
    await bobs_ws.close()


async def test_logging_out_another_session_leaves_this_one_open(alice):
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    client = Client()
    await sync_to_async(client.force_login)(alice)
    await sync_to_async(client.post)("/accounts/logout/")
    assert await ws.c.receive_nothing(0.5)
    await ws.close()


async def test_a_send_after_the_session_ended_stores_nothing(alice, fake_provider):
    """Logged out where no event reached this socket (or the session expired): the send is refused."""
    fake_provider.script(Reply(text="should never be asked"))
    conv = await sync_to_async(make_conversation)(alice)
    cookie = await sync_to_async(session_cookie)(alice)
    ok, ws = await open_socket(alice, conv.pk, cookie=cookie)
    await ws.recv()
    await sync_to_async(SessionStore(cookie).delete)()
    await ws.send_message("spend my tokens")
    assert await closed_with(ws) == 4401
    assert await count(Message, conversation=conv) == 0  # before: stored, and the provider called
    assert fake_provider.requests == []


async def test_deactivating_a_user_closes_their_sockets_and_refuses_their_sends(alice, fake_provider):
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    alice.is_active = False
    await sync_to_async(alice.save)()
    assert await closed_with(ws) == 4401
    assert await count(Message, conversation=conv) == 0


@pytest.mark.slow
@pytest.mark.skipif(not ON_REDIS, reason="needs PostgreSQL and Redis shared by several processes")
async def test_logging_out_in_one_process_closes_the_socket_in_another(alice, live_server_factory):
    import aiohttp

    a, b = live_server_factory(), live_server_factory()
    conv = await sync_to_async(make_conversation)(alice)
    cookie = await sync_to_async(session_cookie)(alice)
    ws = await connect_live(a, alice, conv.pk, cookie=cookie)
    await ws.recv()
    # Log out through B's real logout form (CSRF token and all).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(f"{b.url}/accounts/logout/", headers={"Cookie": f"sessionid={cookie}"}) as page:
            html = await page.text()
            csrf = page.cookies["csrftoken"].value
        token = html.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
        async with http.post(
            f"{b.url}/accounts/logout/",
            data={"csrfmiddlewaretoken": token},
            headers={
                "Cookie": f"sessionid={cookie}; csrftoken={csrf}",
                "Referer": f"{b.url}/accounts/logout/",
                "Origin": b.url,
            },
            allow_redirects=False,
        ) as response:
            assert response.status == 302
    # The server's close frame carries the code. (Not `ws.close_code`: on a loaded machine this client may
    # answer the close after daphne's one-second close handshake gave up and dropped the connection, and
    # aiohttp then overwrites the received code with 1006.)
    message = await ws.c.ws.receive(timeout=5)
    assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE, 4401)
    await ws.close()


def test_the_one_read_check_of_a_send_answers_as_the_sessions_user_does(alice, bob):
    """`signed_in` (every send) reads the session and the user in one query; `session_user` (the
    handshake) through Django's session store and auth backend. They must agree in every case."""
    from django.contrib.auth import BACKEND_SESSION_KEY

    from conversations import sockets

    def both(key: str | None, user) -> tuple[bool | None, bool]:
        found = sockets.session_user(key)
        return sockets._signed_in_one_read(key, user.pk) if key else None, found is not None and found.pk == user.pk

    key = session_cookie(alice)
    assert both(key, alice) == (True, True)
    assert both(key, bob) == (False, False)  # another user's session
    assert both("no-such-session", alice) == (False, False)
    assert sockets.signed_in(None, alice.pk) is False and sockets.signed_in("", alice.pk) is False

    alice.set_password("a new password")  # the session's hash no longer matches
    alice.save()
    assert both(key, alice) == (False, False)
    key = session_cookie(alice)
    assert both(key, alice) == (True, True)

    store = SessionStore(key)
    store[BACKEND_SESSION_KEY] = "some.backend.no.longer.Used"
    store.save()
    assert both(key, alice) == (False, False)

    key = session_cookie(alice)
    type(alice).objects.filter(pk=alice.pk).update(is_active=False)
    assert both(key, alice) == (False, False)
    type(alice).objects.filter(pk=alice.pk).update(is_active=True)
    assert both(key, alice) == (True, True)

    store = SessionStore(key)
    store.set_expiry(-1)  # expired
    store.save()
    assert both(key, alice) == (False, False)

    key = session_cookie(alice)
    SessionStore(key).delete()  # signed out
    assert both(key, alice) == (False, False)

    key = session_cookie(bob)
    bob.delete()
    assert sockets._signed_in_one_read(key, bob.pk) is False
