"""`resume` cannot flood: one in flight per reply per socket, a cross-process resume falls back to
the stored text when nobody answers (as `state` does), and a client's own resumes never get its
socket closed by the frame-rate limit."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from conversations.models import Message
from tests.conftest import open_socket
from tests.factories import make_conversation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def reply_in(conv, status, content):
    Message.objects.create(conversation=conv, role="user", content="question")
    return Message.objects.create(conversation=conv, role="assistant", status=status, content=content, model="x")


async def test_a_clients_own_resumes_never_close_its_socket(alice, settings):
    settings.CHAT_MAX_FRAMES_PER_10S = 10
    conv = await sync_to_async(make_conversation)(alice)
    reply = await sync_to_async(reply_in)(conv, "complete", "all of it")
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    for _ in range(40):  # past three times the frame limit: before, the socket closed with 4008
        await ws.send({"type": "resume", "message_id": reply.pk, "offset": 0})
    await ws.send({"type": "stop"})
    ack = await ws.until("stopping", timeout=10)  # still open, still answering
    assert ack == {"type": "stopping", "message_id": None}
    deltas = [f for f in ws.frames if f["type"] == "delta"]
    assert 1 <= len(deltas) <= 10  # the answers are bounded by the budget
    assert all(f["text"] == "all of it" for f in deltas)
    assert not any(f["type"] == "error" and f["code"] == "rate_limited" for f in ws.frames)
    await ws.close()


async def test_a_resume_nobody_answers_falls_back_to_the_stored_text(alice):
    """The reply is `streaming` in another process that does not answer (dead, or not listening yet)."""
    conv = await sync_to_async(make_conversation)(alice)
    reply = await sync_to_async(reply_in)(conv, "streaming", "stored so far")
    ok, ws = await open_socket(alice, conv.pk)
    state = await ws.recv(timeout=5)
    assert state["generating"]["text"] == "stored so far"
    for _ in range(5):  # one in flight: the repeats are covered by its answer
        await ws.send({"type": "resume", "message_id": reply.pk, "offset": 7})
    delta = await ws.until("delta", timeout=5)  # before: no answer at all
    assert delta == {"type": "delta", "message_id": reply.pk, "offset": 7, "text": "so far"}
    assert await ws.c.receive_nothing(2.5)
    assert len([f for f in ws.frames if f["type"] == "delta"]) == 1
    await ws.close()
