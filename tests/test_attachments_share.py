"""Continuing a shared thread copies its files into the reader's account, sharing the owner's stored bytes."""

from __future__ import annotations

import base64

import pytest
from asgiref.sync import sync_to_async
from django.core.files.storage import default_storage
from django.test import Client

from accounts.services import account_delete, share_create
from conversations.attachment import storage_used
from conversations.models import Attachment, Conversation, Message
from tests.factories import make_conversation
from tests.files import png
from tests.test_attachments_edit import send, sent_message
from tests.test_attachments_send import upload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def shared_thread_with_files(alice):
    """Alice's thread whose first message carries an image and a text file, and a link to it."""
    conv = await sync_to_async(make_conversation)(alice)
    image = await upload(alice, conv, "a.png", png(64, 48, "purple"))
    notes = await upload(alice, conv, "notes.txt", b"buy milk\n")
    frames = await send(alice, conv, {"content": "Look", "attachments": [str(image.pk), str(notes.pk)]})
    assert frames[-1]["type"] == "end"
    await sync_to_async(conv.refresh_from_db)()
    link = await sync_to_async(share_create)(conversation=conv)
    assert [len(m.get("attachments", ())) for m in link.messages] == [2, 0]
    return conv, link, image, notes


def continue_as(user, link):
    """POST "Continue in my account"; the new conversation and the page it redirects to."""
    client = client_for(user)
    response = client.post(f"/s/{link.token}/continue/")
    assert response.status_code == 302
    conversation = Conversation.objects.get(owner=user, pk=response["Location"].split("/")[2])
    return conversation, client.get(response["Location"]).content.decode(), client


def copied_files(conversation) -> list[Attachment]:
    return list(Attachment.objects.filter(conversation=conversation).order_by("position"))


async def test_continuing_a_shared_thread_copies_its_files(alice, bob, fake_provider):
    conv, link, image, notes = await shared_thread_with_files(alice)
    copy, page, client = await sync_to_async(continue_as)(bob, link)
    files = await sync_to_async(copied_files)(copy)
    assert [(f.name, f.owner_id, f.file.name) for f in files] == [
        ("a.png", bob.pk, image.file.name),
        ("notes.txt", bob.pk, notes.file.name),
    ]
    first = await sync_to_async(lambda: Message.objects.filter(conversation=copy).order_by("id").first())()
    assert {f.message_id for f in files} == {first.pk} and first.content == "Look"
    # Bob sees them on his page and downloads them as his own; they count against his storage.
    assert f"/attachments/{files[0].pk}/" in page and "notes.txt" in page
    served = await sync_to_async(lambda: b"".join(client.get(f"/attachments/{files[0].pk}/").streaming_content))()
    assert served == await sync_to_async(lambda: image.file.open("rb").read())()
    assert await sync_to_async(storage_used)(bob.pk) == image.size + notes.size

    # His next message's request carries the thread's files as history.
    frames = await send(bob, copy, {"content": "What was in that?"})
    assert frames[-1]["type"] == "end"
    first_turn = [m for m in fake_provider.requests[-1].json["messages"] if m["role"] == "user"][0]["content"]
    assert [p["type"] for p in first_turn] == ["image_url", "text", "text"]
    data = base64.b64decode(first_turn[0]["image_url"]["url"].split(",", 1)[1])
    assert data == served
    assert "buy milk" in first_turn[1]["text"]
    assert sent_message(frames)["content"] == "What was in that?"


async def test_the_copy_keeps_the_bytes_when_the_owner_deletes_everything(alice, bob, fake_provider):
    conv, link, image, notes = await shared_thread_with_files(alice)
    copy, _, client = await sync_to_async(continue_as)(bob, link)
    await sync_to_async(account_delete)(user=alice)
    exists = sync_to_async(default_storage.exists)
    assert await exists(image.file.name) and await exists(notes.file.name)
    files = await sync_to_async(copied_files)(copy)
    response = await sync_to_async(client.get)(f"/attachments/{files[0].pk}/")
    assert response.status_code == 200
    # Bob's delete takes the last rows, and the bytes with them.
    await sync_to_async(client.post)(f"/conversations/{copy.pk}/delete/")
    assert not await exists(image.file.name) and not await exists(notes.file.name)


async def test_files_that_do_not_fit_the_readers_storage_are_left_out_and_said_so(alice, bob, fake_provider, settings):
    conv, link, image, notes = await shared_thread_with_files(alice)
    settings.CHAT_USER_STORAGE_MB = 0
    copy, page, _ = await sync_to_async(continue_as)(bob, link)
    assert await sync_to_async(copied_files)(copy) == []
    assert "were not copied: they do not fit in your storage allowance" in page
    texts = await sync_to_async(lambda: list(copy.messages.order_by("id").values_list("content", flat=True)))()
    assert texts[0] == "Look"  # the text came along all the same


async def test_the_same_thread_continued_twice_counts_its_files_once(alice, bob, fake_provider):
    conv, link, image, notes = await shared_thread_with_files(alice)
    await sync_to_async(continue_as)(bob, link)
    await sync_to_async(continue_as)(bob, link)
    assert await sync_to_async(Attachment.objects.filter(owner=bob).count)() == 4
    assert await sync_to_async(storage_used)(bob.pk) == image.size + notes.size
