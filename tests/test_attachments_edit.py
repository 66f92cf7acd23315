"""Editing a message keeps its files unless the user removes them; the stored bytes stay while any row shows them."""

from __future__ import annotations

import uuid

import pytest
from asgiref.sync import sync_to_async
from django.core.files.storage import default_storage

from conversations.attachment import storage_used
from conversations.models import Attachment, Conversation, Message
from tests.conftest import open_socket
from tests.factories import make_conversation
from tests.files import png
from tests.test_attachments_send import conversation_on, upload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


async def send(user, conv, frame: dict) -> list[dict]:
    """One `send` (client_id added) over a real socket; the frames up to the reply's end (or the error)."""
    ok, ws = await open_socket(user, conv.pk)
    assert ok
    await ws.recv()
    await ws.send({"type": "send", "client_id": str(uuid.uuid4()), **frame})
    while True:
        frame = await ws.recv(timeout=40)
        if frame["type"] in ("end", "error"):
            break
    await ws.close()
    return ws.frames


def sent_message(frames: list[dict]) -> dict:
    return next(f for f in frames if f["type"] == "message")["message"]


def last_user_parts(body: dict) -> list[dict]:
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return content if isinstance(content, list) else [{"type": "text", "text": content}]


def file_names(parts: list[dict]) -> list[str]:
    """The files in a request's user turn (OpenAI): images by kind, text files by name."""
    return ["image" if p["type"] == "image_url" else p["text"].split("`")[1] for p in parts if p is not parts[-1]]


@sync_to_async
def rows(**filters) -> list[Attachment]:
    return list(Attachment.objects.filter(**filters).order_by("message_id", "position"))


async def first_message_with_files(alice, fake_provider):
    conv = await conversation_on(alice, "openai:gpt-test")
    image = await upload(alice, conv, "a.png", png())
    notes = await upload(alice, conv, "notes.txt", b"buy milk\n")
    frames = await send(alice, conv, {"content": "Look", "attachments": [str(image.pk), str(notes.pk)]})
    return conv, sent_message(frames), image, notes


async def test_an_edit_keeps_the_files_of_the_message_it_edits(alice, fake_provider):
    conv, original, image, notes = await first_message_with_files(alice, fake_provider)
    kept = [f["id"] for f in original["attachments"]]
    frames = await send(alice, conv, {"content": "Look again", "edit_of": original["id"], "attachments": kept})
    assert frames[-1]["type"] == "end" and frames[-1]["status"] == "complete"
    edited = sent_message(frames)
    assert edited["parent_id"] is None and edited["id"] != original["id"]
    assert [f["name"] for f in edited["attachments"]] == ["a.png", "notes.txt"]
    # The new version's request carries the kept files, read from the same stored bytes.
    parts = last_user_parts(fake_provider.requests[-1].json)
    assert file_names(parts) == ["image", "notes.txt"]
    assert parts[-1] == {"type": "text", "text": "Look again"}
    copies = await rows(message_id=edited["id"])
    assert [c.file.name for c in copies] == [image.file.name, notes.file.name]
    assert {c.pk for c in copies}.isdisjoint({image.pk, notes.pk})
    # The original keeps its own files, and the bytes count once against the owner's storage.
    assert [a.pk for a in await rows(message_id=original["id"])] == [image.pk, notes.pk]
    assert await sync_to_async(storage_used)(alice.pk) == image.size + notes.size


async def test_an_edit_can_leave_out_a_file_or_all_of_them(alice, fake_provider):
    conv, original, image, notes = await first_message_with_files(alice, fake_provider)
    frames = await send(
        alice, conv, {"content": "Only the notes", "edit_of": original["id"], "attachments": [str(notes.pk)]}
    )
    assert [f["name"] for f in sent_message(frames)["attachments"]] == ["notes.txt"]
    assert file_names(last_user_parts(fake_provider.requests[-1].json)) == ["notes.txt"]

    frames = await send(alice, conv, {"content": "No files", "edit_of": original["id"], "attachments": []})
    assert "attachments" not in sent_message(frames)
    assert last_user_parts(fake_provider.requests[-1].json) == [{"type": "text", "text": "No files"}]
    # The original still has both.
    assert len(await rows(message_id=original["id"])) == 2


async def test_an_edit_may_add_new_uploads_to_the_kept_files_in_its_order(alice, fake_provider):
    conv, original, image, notes = await first_message_with_files(alice, fake_provider)
    extra = await upload(alice, conv, "extra.txt", b"more\n")
    ids = [str(extra.pk), str(notes.pk)]
    frames = await send(alice, conv, {"content": "Mixed", "edit_of": original["id"], "attachments": ids})
    assert [f["name"] for f in sent_message(frames)["attachments"]] == ["extra.txt", "notes.txt"]
    assert file_names(last_user_parts(fake_provider.requests[-1].json)) == ["extra.txt", "notes.txt"]
    await sync_to_async(extra.refresh_from_db)()
    assert extra.message_id == sent_message(frames)["id"]  # the upload itself is bound, not copied


async def test_only_the_files_of_another_version_of_the_same_message_may_be_reused(alice, bob, fake_provider):
    conv, original, image, notes = await first_message_with_files(alice, fake_provider)
    # A follow-up message may not pick up the first message's files: they were sent already.
    frames = await send(alice, conv, {"content": "Again", "attachments": [str(image.pk)]})
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "invalid"
    # Nor may an edit of that follow-up (its versions are other messages).
    follow = sent_message(await send(alice, conv, {"content": "Next"}))
    frames = await send(alice, conv, {"content": "Next!", "edit_of": follow["id"], "attachments": [str(image.pk)]})
    assert frames[-1]["code"] == "invalid"
    # Nor bob, editing in his own thread, with alice's file ids.
    bobs = await sync_to_async(make_conversation)(bob, persona=conv.persona)
    first = sent_message(await send(bob, bobs, {"content": "Hi"}))
    frames = await send(bob, bobs, {"content": "Hi!", "edit_of": first["id"], "attachments": [str(image.pk)]})
    assert frames[-1]["code"] == "invalid"
    count = sync_to_async(lambda **f: Message.objects.filter(**f).count())
    assert await count(conversation=conv, role="user") == 2 and await count(conversation=bobs, role="user") == 1


async def test_an_edit_via_parent_id_keeps_files_too(alice, fake_provider):
    conv = await conversation_on(alice, "openai:gpt-test")
    first = sent_message(await send(alice, conv, {"content": "Hi"}))
    reply_id = await sync_to_async(lambda: Message.objects.get(parent_id=first["id"]).pk)()
    notes = await upload(alice, conv, "notes.txt", b"buy milk\n")
    second = sent_message(await send(alice, conv, {"content": "Read", "attachments": [str(notes.pk)]}))
    frames = await send(alice, conv, {"content": "Read it", "parent_id": reply_id, "attachments": [str(notes.pk)]})
    edited = sent_message(frames)
    assert edited["parent_id"] == second["parent_id"] == reply_id
    assert [f["name"] for f in edited["attachments"]] == ["notes.txt"]


@sync_to_async
def delete(queryset) -> None:
    queryset.delete()


async def test_the_stored_bytes_go_with_the_last_row_that_shows_them(alice, fake_provider):
    conv, original, image, notes = await first_message_with_files(alice, fake_provider)
    kept = [str(image.pk)]
    await send(alice, conv, {"content": "Again", "edit_of": original["id"], "attachments": kept})
    exists = sync_to_async(default_storage.exists)
    # One row of two goes: the bytes stay for the other.
    await delete(Attachment.objects.filter(pk=image.pk))
    assert await exists(image.file.name)
    # The notes were not kept: their only row goes, and the file with it.
    await delete(Attachment.objects.filter(pk=notes.pk))
    assert not await exists(notes.file.name)
    # Deleting the conversation takes the last row of the image, and its bytes.
    await delete(Conversation.objects.filter(pk=conv.pk))
    assert not await exists(image.file.name)
    assert await rows() == []


async def test_switching_versions_shows_each_versions_own_files(alice, fake_provider):
    conv, original, image, notes = await first_message_with_files(alice, fake_provider)
    edited = sent_message(
        await send(alice, conv, {"content": "Notes only", "edit_of": original["id"], "attachments": [str(notes.pk)]})
    )
    ok, ws = await open_socket(alice, conv.pk)
    assert ok
    await ws.recv()
    for version, names in ((original, ["a.png", "notes.txt"]), (edited, ["notes.txt"])):
        await ws.send({"type": "switch", "message_id": version["id"]})
        path = (await ws.recv(timeout=10))["messages"]
        assert path[0]["id"] == version["id"]
        assert [f["name"] for f in path[0]["attachments"]] == names
        assert "attachments" not in path[1]  # the reply
    await ws.close()
