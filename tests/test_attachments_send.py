"""Attachments in a send: bound to the message, and delivered to each provider in its own format (real SDKs)."""

from __future__ import annotations

import base64
import io
import json
import os
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from attachments.services import attachment_upload
from conversations.models import Attachment, Message, Persona
from tests.conftest import open_socket
from tests.factories import make_conversation, make_persona
from tests.fakes.provider import Reply
from tests.files import pdf, png

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def _upload(user, conversation, name: str, data: bytes) -> Attachment:
    return attachment_upload(owner=user, conversation=conversation, upload=SimpleUploadedFile(name, data))


upload = sync_to_async(_upload)


async def conversation_on(user, model: str):
    persona = await sync_to_async(make_persona)(model.replace(":", "-"), model=model)
    return await sync_to_async(make_conversation)(user, persona=persona)


async def send(user, conv, content: str, attachments: list[str]) -> list[dict]:
    """Send over a real socket; the frames up to the reply's end (or the error)."""
    ok, ws = await open_socket(user, conv.pk)
    assert ok
    await ws.recv()
    await ws.send({"type": "send", "client_id": str(uuid.uuid4()), "content": content, "attachments": attachments})
    while True:
        try:
            frame = await ws.recv(timeout=40)
        except TimeoutError:
            raise AssertionError(f"no end; frames: {ws.frames}") from None
        if frame["type"] in ("end", "error"):
            break
    await ws.close()
    return ws.frames


def last_user_content(body: dict):
    return [m for m in body["messages"] if m["role"] == "user"][-1]["content"]


async def test_an_image_reaches_openai_as_image_url_and_anthropic_as_an_image_block(alice, fake_provider):
    data = png(50, 20, "green")
    fake_provider.script(Reply(text="I see green."), Reply(text="Green it is."))
    for model in ("anthropic:claude-test", "openai:gpt-test"):
        conv = await conversation_on(alice, model)
        attachment = await upload(alice, conv, "green.png", data)
        frames = await send(alice, conv, "What colour?", [str(attachment.pk)])
        message = next(f for f in frames if f["type"] == "message")["message"]
        assert message["attachments"] == [
            {"id": str(attachment.pk), "name": "green.png", "size": len(data), "content_type": "image/png"}
        ]
        assert frames[-1]["type"] == "end" and frames[-1]["status"] == "complete"
    anthropic_body, openai_body = (r.json for r in fake_provider.requests)
    parts = last_user_content(openai_body)
    assert parts[0]["type"] == "image_url"
    prefix, encoded = parts[0]["image_url"]["url"].split(",", 1)
    assert prefix == "data:image/png;base64"
    assert base64.b64decode(encoded) == data
    assert parts[1] == {"type": "text", "text": "What colour?"}

    blocks = last_user_content(anthropic_body)
    assert blocks[0]["type"] == "image"
    assert blocks[0]["source"]["type"] == "base64"
    assert blocks[0]["source"]["media_type"] == "image/png"
    assert base64.b64decode(blocks[0]["source"]["data"]) == data
    assert (blocks[1]["type"], blocks[1]["text"]) == ("text", "What colour?")
    assert await sync_to_async(Attachment.objects.filter(message__isnull=False).count)() == 2


async def test_a_pdf_reaches_anthropic_as_a_document_and_openai_as_its_text(alice, fake_provider):
    data = pdf("The secret word is pelican.")
    for model in ("anthropic:claude-test", "openai:gpt-test"):
        conv = await conversation_on(alice, model)
        attachment = await upload(alice, conv, "secret.pdf", data)
        frames = await send(alice, conv, "Summarize", [str(attachment.pk)])
        assert frames[-1]["type"] == "end"
    anthropic_body, openai_body = (r.json for r in fake_provider.requests)
    blocks = last_user_content(anthropic_body)
    assert blocks[0]["type"] == "document"
    assert blocks[0]["source"] == {
        "type": "base64",
        "media_type": "application/pdf",
        "data": base64.b64encode(data).decode(),
    }
    assert blocks[0]["title"] == "secret.pdf"
    parts = last_user_content(openai_body)
    assert parts[0]["type"] == "text"
    assert "File `secret.pdf`:" in parts[0]["text"]
    assert "The secret word is pelican." in parts[0]["text"]
    assert "application/pdf" not in str(openai_body) and base64.b64encode(data).decode() not in str(openai_body)


async def test_a_text_file_arrives_fenced_with_its_name(alice, fake_provider):
    source = "def f():\n    return '```'\n"
    conv = await conversation_on(alice, "openai:gpt-test")
    attachment = await upload(alice, conv, "tricky.py", source.encode())
    frames = await send(alice, conv, "Review this", [str(attachment.pk)])
    assert frames[-1]["type"] == "end"
    parts = last_user_content(fake_provider.requests[-1].json)
    # The fence is longer than the backticks inside, so the file cannot close it early.
    assert parts[0] == {"type": "text", "text": "File `tricky.py`:\n````\n" + source.rstrip() + "\n````"}
    assert parts[1] == {"type": "text", "text": "Review this"}


async def test_files_stay_in_the_history_of_later_turns(alice, fake_provider):
    conv = await conversation_on(alice, "anthropic:claude-test")
    attachment = await upload(alice, conv, "a.png", png())
    await send(alice, conv, "Look", [str(attachment.pk)])
    await send(alice, conv, "And now?", [])
    first_user = anthropic_user_turns(fake_provider.requests[-1].json)[0]
    assert [b["type"] for b in first_user["content"]] == ["image", "text"]


def anthropic_user_turns(body: dict) -> list[dict]:
    return [m for m in body["messages"] if m["role"] == "user"]


async def test_a_message_may_be_only_files(alice, fake_provider):
    conv = await conversation_on(alice, "openai:gpt-test")
    attachment = await upload(alice, conv, "notes.txt", b"buy milk\n")
    frames = await send(alice, conv, "", [str(attachment.pk)])
    assert frames[-1]["type"] == "end"
    assert last_user_content(fake_provider.requests[-1].json) == [
        {"type": "text", "text": "File `notes.txt`:\n```\nbuy milk\n```"}
    ]
    await sync_to_async(conv.refresh_from_db)()
    assert conv.title == "notes.txt"


async def test_another_users_attachment_is_invalid_and_stores_nothing(alice, bob, fake_provider):
    bobs_conv = await conversation_on(bob, "openai:gpt-test")
    bobs = await upload(bob, bobs_conv, "private.png", png())
    conv = await sync_to_async(make_conversation)(alice)
    frames = await send(alice, conv, "Steal", [str(bobs.pk)])
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "invalid"
    assert not await sync_to_async(Message.objects.filter(conversation=conv).exists)()
    assert fake_provider.requests == []
    # Nor one of alice's own uploads to another thread, nor one already sent, nor a made-up id.
    other = await conversation_on(alice, "anthropic:claude-x")
    elsewhere = await upload(alice, other, "a.txt", b"x\n")
    for ids in ([str(elsewhere.pk)], [str(uuid.uuid4())], ["not-a-uuid"], "x", [1]):
        frames = await send(alice, conv, "Hi", ids)
        assert frames[-1]["type"] == "error" and frames[-1]["code"] == "invalid", ids
    assert not await sync_to_async(Message.objects.filter(conversation=conv).exists)()


async def test_a_file_is_sent_once(alice, fake_provider):
    conv = await conversation_on(alice, "openai:gpt-test")
    attachment = await upload(alice, conv, "a.txt", b"x\n")
    assert (await send(alice, conv, "one", [str(attachment.pk)]))[-1]["type"] == "end"
    frames = await send(alice, conv, "two", [str(attachment.pk)])
    assert frames[-1]["code"] == "invalid"


async def test_a_model_that_cannot_take_a_kind_refuses_the_send_before_storing(alice, fake_provider):
    conv = await conversation_on(alice, "openai:gpt-test")
    attachment = await upload(alice, conv, "a.png", png())
    # Staff point the persona at a model that reads text only.
    await sync_to_async(Persona.objects.filter(pk=conv.persona_id).update)(model="offline:demo")
    frames = await send(alice, conv, "Look", [str(attachment.pk)])
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "invalid"
    assert "does not take images" in frames[-1]["message"]
    assert not await sync_to_async(Message.objects.filter(conversation=conv).exists)()
    await sync_to_async(attachment.refresh_from_db)()
    assert attachment.message_id is None


async def test_at_most_ten_files_go_with_a_message(alice, fake_provider):
    conv = await conversation_on(alice, "openai:gpt-test")
    ids = [str((await upload(alice, conv, f"{i}.txt", b"x\n")).pk) for i in range(11)]
    frames = await send(alice, conv, "all", ids)
    assert frames[-1]["code"] == "invalid" and "At most 10" in frames[-1]["message"]
    assert (await send(alice, conv, "ten", ids[:10]))[-1]["type"] == "end"
    assert await sync_to_async(Attachment.objects.filter(message__isnull=False).count)() == 10


async def test_files_count_against_the_budget(alice, fake_provider, settings):
    settings.CHAT_CONTEXT_BUDGET_TOKENS = 1000
    conv = await conversation_on(alice, "openai:gpt-test")
    big = await upload(alice, conv, "big.png", png(2000, 2000))  # OpenAI: 765 tokens
    text = await upload(alice, conv, "words.txt", ("word " * 2000).encode())
    frames = await send(alice, conv, "both", [str(big.pk), str(text.pk)])
    assert frames[-1]["code"] == "invalid" and "budget is 1,000" in frames[-1]["message"]
    assert (await send(alice, conv, "one", [str(big.pk)]))[-1]["type"] == "end"


async def test_the_model_registry_decides_what_a_model_takes(alice, fake_provider):
    from conversations.models import ChatModel

    await sync_to_async(ChatModel.objects.create)(
        name="anthropic:claude-text", supports_images=False, supports_pdf=False
    )
    await sync_to_async(ChatModel.objects.create)(name="anthropic:claude-pdf", supports_images=True, supports_pdf=True)
    # No images for a model the registry says cannot see.
    conv = await conversation_on(alice, "openai:gpt-test")
    image = await upload(alice, conv, "a.png", png())
    await sync_to_async(Persona.objects.filter(pk=conv.persona_id).update)(model="anthropic:claude-text")
    frames = await send(alice, conv, "Look", [str(image.pk)])
    assert frames[-1]["code"] == "invalid" and "does not take images" in frames[-1]["message"]
    # A PDF still goes, as its text, to a model that does not read PDFs; as a document to one that does.
    data = pdf("Registry says text.")
    for model in ("anthropic:claude-text", "anthropic:claude-pdf"):
        conv = await conversation_on(alice, model)
        document = await upload(alice, conv, "r.pdf", data)
        assert (await send(alice, conv, "Read", [str(document.pk)]))[-1]["type"] == "end"
    as_text, as_document = (last_user_content(r.json) for r in fake_provider.requests)
    assert as_text[0]["type"] == "text" and "Registry says text." in as_text[0]["text"]
    assert as_document[0]["type"] == "document"


async def test_files_reach_the_model_in_the_order_they_were_attached_not_uploaded(alice, fake_provider, client):
    conv = await conversation_on(alice, "openai:gpt-test")
    # The second file finishes uploading first (a small file after a large one, say).
    second = await upload(alice, conv, "second.txt", b"two\n")
    first = await upload(alice, conv, "first.txt", b"one\n")
    frames = await send(alice, conv, "Both", [str(first.pk), str(second.pk)])
    message = next(f for f in frames if f["type"] == "message")["message"]
    assert [f["name"] for f in message["attachments"]] == ["first.txt", "second.txt"]
    texts = [p["text"] for p in last_user_content(fake_provider.requests[-1].json)]
    assert texts == ["File `first.txt`:\n```\none\n```", "File `second.txt`:\n```\ntwo\n```", "Both"]
    # Later requests carry the turn's files in the same order, and so do the page and the exports.
    await send(alice, conv, "And?", [])
    history = [m for m in fake_provider.requests[-1].json["messages"] if m["role"] == "user"][0]["content"]
    assert [p["text"].split("`")[1] for p in history[:2]] == ["first.txt", "second.txt"]
    page, doc, markdown = await sync_to_async(_page_and_exports)(client, alice, conv)
    assert page.index("first.txt") < page.index("second.txt")
    assert [f["name"] for f in doc["messages"][0]["attachments"]] == ["first.txt", "second.txt"]
    assert markdown.index("first.txt") < markdown.index("second.txt")


def _page_and_exports(client, user, conv) -> tuple[str, dict, str]:
    client.force_login(user)
    page = client.get(f"/conversations/{conv.pk}/").content.decode()
    doc = json.loads(b"".join(client.get(f"/conversations/{conv.pk}/export.json").streaming_content))
    markdown = b"".join(client.get(f"/conversations/{conv.pk}/export.md").streaming_content).decode()
    return page, doc, markdown


def sent_image(body: dict) -> tuple[str, bytes]:
    """The first image of a request's last user turn: (media type, bytes), from either provider's format."""
    part = last_user_content(body)[0]
    if part["type"] == "image_url":
        prefix, encoded = part["image_url"]["url"].split(",", 1)
        return prefix.removeprefix("data:").removesuffix(";base64"), base64.b64decode(encoded)
    return part["source"]["media_type"], base64.b64decode(part["source"]["data"])


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


async def test_a_large_image_reaches_each_provider_at_the_size_it_reads(alice, fake_provider, client):
    from conversations.context import attachment_tokens, image_tokens

    original = png(3000, 2000, "navy")
    sizes = {}
    for model in ("anthropic:claude-test", "openai:gpt-test"):
        conv = await conversation_on(alice, model)
        attachment = await upload(alice, conv, "big.png", original)
        assert (await send(alice, conv, "What is it?", [str(attachment.pk)]))[-1]["type"] == "end"
        media_type, data = sent_image(fake_provider.requests[-1].json)
        provider = model.partition(":")[0]
        sizes[provider] = size_of(data)
        assert media_type == "image/png"
        # The estimate is what the provider counts for the image it got (it scales it no further).
        assert attachment_tokens(attachment.as_ref(), provider) == image_tokens(*sizes[provider], provider)
        # The download is still the original.
        await sync_to_async(client.force_login)(alice)
        served = await sync_to_async(
            lambda a=attachment: b"".join(client.get(f"/attachments/{a.pk}/").streaming_content)
        )()
        assert served == original
    # Anthropic: the long edge within 1568 and about 1.2 megapixels; OpenAI: within 2048, the short side 768.
    assert sizes == {"anthropic": (1341, 894), "openai": (1152, 768)}


async def test_an_upright_copy_is_kept_at_upload_and_a_turned_photo_is_sent_upright(alice, fake_provider):
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown turned a quarter: portrait
    Image.new("RGB", (3000, 2000), "olive").save(out, format="JPEG", exif=exif)
    conv = await conversation_on(alice, "anthropic:claude-test")
    attachment = await upload(alice, conv, "photo.jpg", out.getvalue())
    assert (attachment.width, attachment.height) == (3000, 2000)
    with attachment.rendition.open("rb") as handle:  # the larger of the two providers' sizes, upright
        assert size_of(handle.read()) == (894, 1341)
    assert (await send(alice, conv, "Which way up?", [str(attachment.pk)]))[-1]["type"] == "end"
    media_type, data = sent_image(fake_provider.requests[-1].json)
    assert (media_type, size_of(data)) == ("image/jpeg", (894, 1341))


async def test_an_image_too_heavy_for_anthropic_goes_as_a_jpeg_of_the_same_size(alice, fake_provider):
    noise = Image.frombytes("RGBA", (1100, 1090), os.urandom(1100 * 1090 * 4))
    out = io.BytesIO()
    noise.save(out, format="PNG")
    assert len(out.getvalue()) > 5 * 1024 * 1024 * 3 // 4  # over 5 MB once base64-encoded
    conv = await conversation_on(alice, "anthropic:claude-test")
    attachment = await upload(alice, conv, "noise.png", out.getvalue())
    assert (await send(alice, conv, "Noise?", [str(attachment.pk)]))[-1]["type"] == "end"
    media_type, data = sent_image(fake_provider.requests[-1].json)
    assert (media_type, size_of(data)) == ("image/jpeg", (1100, 1090))
    assert len(base64.b64encode(data)) <= 5 * 1024 * 1024


async def test_an_animated_gif_goes_to_openai_as_its_first_frame(alice, fake_provider):
    frames = [Image.new("RGB", (60, 40), color) for color in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    gif = out.getvalue()
    for model in ("openai:gpt-test", "anthropic:claude-test"):
        conv = await conversation_on(alice, model)
        attachment = await upload(alice, conv, "anim.gif", gif)
        assert (await send(alice, conv, "Moving?", [str(attachment.pk)]))[-1]["type"] == "end"
    (openai_type, openai_data), (anthropic_type, anthropic_data) = (sent_image(r.json) for r in fake_provider.requests)
    assert openai_type == "image/png" and size_of(openai_data) == (60, 40)  # OpenAI takes still GIFs only
    assert (anthropic_type, anthropic_data) == ("image/gif", gif)


async def test_an_image_in_the_history_of_a_model_that_cannot_see_is_named_instead(alice, fake_provider):
    from conversations.models import ChatModel

    await sync_to_async(ChatModel.objects.create)(name="openai:gpt-text", supports_images=False)
    conv = await conversation_on(alice, "openai:gpt-test")
    image = await upload(alice, conv, "chart.png", png())
    assert (await send(alice, conv, "Look", [str(image.pk)]))[-1]["type"] == "end"
    # Staff point the persona at a text-only model: the earlier image goes as its name.
    await sync_to_async(Persona.objects.filter(pk=conv.persona_id).update)(model="openai:gpt-text")
    assert (await send(alice, conv, "And now?", []))[-1]["type"] == "end"
    first_user = [m for m in fake_provider.requests[-1].json["messages"] if m["role"] == "user"][0]
    assert first_user["content"] == [{"type": "text", "text": "[image: chart.png]"}, {"type": "text", "text": "Look"}]
