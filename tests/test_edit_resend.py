"""Editing a user message and resending it: `send` with `edit_of`, a new version beside the old (docs/protocol.md)."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from conversations.models import Message
from tests.conftest import open_socket
from tests.factories import make_conversation
from tests.fakes.provider import Reply

pytestmark = pytest.mark.django_db(transaction=True)


async def rows(conversation):
    return await sync_to_async(
        lambda: [
            (m.role, m.content, m.parent_id) for m in Message.objects.filter(conversation=conversation).order_by("id")
        ]
    )()


async def first_turn(ws, fake_provider, text="First answer."):
    fake_provider.script(Reply(text=text))
    await ws.send_message("Question one")
    user = (await ws.until("message"))["message"]
    end = await ws.until("end")
    return user, end


async def test_it_resends_an_edited_message_as_a_new_version_beside_the_old(alice, fake_provider):
    conversation = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conversation.pk)
    _, other = await open_socket(alice, conversation.pk)
    await ws.recv()
    await other.recv()
    user, end = await first_turn(ws, fake_provider)

    fake_provider.script(Reply(text="Answer to the edit."))
    await ws.send({"type": "send", "client_id": "6b0d7c1e-8f1a-4a51-9d07-1b1f9f6a0001", "content": "Question two",
                   "edit_of": user["id"]})  # fmt: skip
    message = await ws.until("message")
    assert message["message"]["content"] == "Question two"
    assert message["parent_id"] is None and message["message"]["parent_id"] is None
    assert message["siblings"] == [user["id"], message["message"]["id"]]
    seen = await other.until("message")
    while seen["message"]["content"] != "Question two":
        seen = await other.until("message")
    assert seen["siblings"] == [user["id"], message["message"]["id"]]  # every tab shows "2 / 2"
    start = await ws.until("start")
    assert start["parent_id"] == message["message"]["id"]
    await ws.until("end")
    new = message["message"]["id"]
    assert await rows(conversation) == [  # nothing hidden, nothing lost: the old turn is a version away
        ("user", "Question one", None),
        ("assistant", "First answer.", user["id"]),
        ("user", "Question two", None),
        ("assistant", "Answer to the edit.", new),
    ]
    sent = fake_provider.requests[-1].json["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["Question two"]
    await ws.close()
    await other.close()


async def test_it_edits_an_earlier_message_and_refuses_bad_edits(alice, fake_provider):
    conversation = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conversation.pk)
    await ws.recv()
    user, _ = await first_turn(ws, fake_provider)
    fake_provider.script(Reply(text="Second answer."))
    await ws.send_message("Question two")
    await ws.until("end")
    before = await rows(conversation)
    reply_id = [i for i, r in enumerate(before) if r[0] == "assistant"]
    for bad in ["12", True, 1.5, 2**70, -1, 10**9]:
        await ws.send({"type": "send", "client_id": "6b0d7c1e-8f1a-4a51-9d07-1b1f9f6a0003", "content": "x",
                       "edit_of": bad})  # fmt: skip
        assert (await ws.until("error"))["code"] == "invalid"
    # A reply is not a user message: regenerate it instead.
    first_reply = await sync_to_async(Message.objects.filter(conversation=conversation, role="assistant").first)()
    await ws.send({"type": "send", "client_id": "6b0d7c1e-8f1a-4a51-9d07-1b1f9f6a0004", "content": "x",
                   "edit_of": first_reply.pk})  # fmt: skip
    assert (await ws.until("error"))["code"] == "invalid"
    assert await rows(conversation) == before  # nothing stored on a refusal
    assert reply_id
    # The first message, not only the last, can be edited: a sibling of it, the new path's root.
    fake_provider.script(Reply(text="Answer to the edited first."))
    await ws.send({"type": "send", "client_id": "6b0d7c1e-8f1a-4a51-9d07-1b1f9f6a0002", "content": "Edited one",
                   "edit_of": user["id"]})  # fmt: skip
    message = await ws.until("message")
    assert message["message"]["parent_id"] is None and message["siblings"][0] == user["id"]
    await ws.until("end")
    assert len(await rows(conversation)) == len(before) + 2
    await ws.close()


async def test_an_edit_during_a_reply_is_busy_and_changes_nothing(alice, fake_provider):
    conversation = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conversation.pk)
    await ws.recv()
    fake_provider.script(Reply(text="slow " * 200, token_delay=0.02))
    await ws.send_message("Question one")
    user = (await ws.until("message"))["message"]
    await ws.until("delta")
    await ws.send({"type": "send", "client_id": "6b0d7c1e-8f1a-4a51-9d07-1b1f9f6a0004", "content": "edited",
                   "edit_of": user["id"]})  # fmt: skip
    assert (await ws.until("error"))["code"] == "busy"
    await ws.send({"type": "stop"})
    await ws.until("end")
    assert [r for r, _, _ in await rows(conversation)] == ["user", "assistant"]
    await ws.close()


async def test_a_resent_edit_stores_nothing_new(alice, fake_provider):
    conversation = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conversation.pk)
    await ws.recv()
    user, _ = await first_turn(ws, fake_provider)
    fake_provider.script(Reply(text="Edited answer."))
    frame = {
        "type": "send",
        "client_id": "6b0d7c1e-8f1a-4a51-9d07-1b1f9f6a0005",
        "content": "Q2",
        "edit_of": user["id"],
    }
    await ws.send(frame)
    first = await ws.until("message")
    await ws.until("end")
    await ws.send(frame)  # as a client does after a reconnect
    again = await ws.until("message")
    assert again["message"] == first["message"]
    assert len(await rows(conversation)) == 4
    await ws.close()
