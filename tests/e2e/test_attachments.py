"""Attachments in a real browser: paste an image, drop a PDF, send, and see them on the message after a reload."""

from __future__ import annotations

import asyncio
import base64

import pytest
from playwright.async_api import expect

from conversations.models import Attachment
from tests.e2e.conftest import db, screenshot
from tests.e2e.helpers import connected, reply_ends, send, until
from tests.factories import default_persona, make_conversation
from tests.files import pdf, png
from tests.live import LiveServer

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def server(django_db_setup, _provider_server, tmp_path_factory):
    """The module's daphne, with its own media directory."""
    live = LiveServer(
        tmp_path_factory.mktemp("e2e-attach"),
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=_provider_server.openai_base_url,
        CHAT_DEFAULT_MODEL="openai:gpt-test",
        CHAT_FLUSH_INTERVAL="0.2",
        MEDIA_ROOT=str(tmp_path_factory.mktemp("media")),
        LOG_LEVEL="WARNING",
    ).start()
    yield live
    live.stop()


# Builds a File in the page and hands it over as a paste into the composer, or a drop onto it.
PASTE = """([b64, type, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type }));
  document.getElementById("composer-input").dispatchEvent(
    new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }));
}"""
DROP = """([b64, type, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type }));
  const target = document.getElementById("composer-input");
  for (const kind of ["dragenter", "dragover", "drop"]) {
    target.dispatchEvent(new DragEvent(kind, { dataTransfer: data, bubbles: true, cancelable: true }));
  }
}"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_it_pastes_an_image_drops_a_pdf_sends_them_and_shows_them_after_a_reload(web, alice, _provider_server):
    await db(default_persona)
    conv = await db(make_conversation, alice)
    page = await web.page(alice, f"/conversations/{conv.pk}/")
    await connected(page)
    image = png(320, 200, "orange")
    await page.evaluate(PASTE, [b64(image), "image/png", ""])
    # Files go to the model in the composer's order (pasted, then dropped), whichever upload ends first.
    await page.evaluate(DROP, [b64(pdf("Minutes of the meeting.")), "application/pdf", "minutes.pdf"])
    chips = page.locator(".attach-chip")
    await expect(chips).to_have_count(2)
    await expect(page.locator(".attach-chip.attach-ready")).to_have_count(2)
    await expect(chips.first.locator("img.attach-thumb")).to_be_visible()
    await expect(chips.nth(1)).to_contain_text("minutes.pdf")
    await screenshot(page, "attachments-composer")

    await send(page, "What is in these?")
    await reply_ends(page)
    await expect(page.locator(".attach-chip")).to_have_count(0)
    user = page.locator("article.msg-user").last
    await expect(user.locator(".file-thumb img")).to_have_count(1)
    await expect(user.locator(".file-chip")).to_contain_text("minutes.pdf")

    # The reply's request: the one whose last user turn carries the files (a background title
    # request, plain text, may have come after it).
    last_turns = [
        [m for m in r.json.get("messages", []) if m["role"] == "user"][-1:] for r in _provider_server.requests
    ]
    with_parts = [turn[0]["content"] for turn in last_turns if turn and isinstance(turn[0]["content"], list)]
    assert len(with_parts) == 1
    parts = with_parts[0]
    assert parts[0]["type"] == "image_url", parts
    assert base64.b64decode(parts[0]["image_url"]["url"].split(",", 1)[1]) == image
    assert "Minutes of the meeting." in parts[1]["text"]
    assert parts[2] == {"type": "text", "text": "What is in these?"}

    await page.reload()
    await connected(page)
    user = page.locator("article.msg-user").last
    thumb = user.locator(".file-thumb img")
    await expect(thumb).to_be_visible()
    loaded = "(() => { const i = document.querySelector('.file-thumb img'); return i && i.naturalWidth === 320; })()"
    await until(page, loaded)
    await expect(user.locator(".file-chip")).to_contain_text("minutes.pdf")
    await screenshot(page, "attachments-thread")

    await user.locator(".file-thumb").click()
    await expect(page.locator("#lightbox")).to_be_visible()
    await expect(page.locator("#lightbox .lightbox-caption")).to_have_text("pasted-image.png")
    await screenshot(page, "attachments-lightbox")
    await page.keyboard.press("Escape")
    await expect(page.locator("#lightbox")).to_be_hidden()
    assert await web.csp_violations(page) == []
    names = await db(lambda: sorted(Attachment.objects.values_list("name", flat=True)))
    assert names == ["minutes.pdf", "pasted-image.png"]


async def test_a_refused_file_says_why_and_can_be_removed(web, alice):
    await db(default_persona)
    conv = await db(make_conversation, alice)
    page = await web.page(alice, f"/conversations/{conv.pk}/")
    await connected(page)
    await page.evaluate(DROP, [b64(b"MZ\x90\x00" + b"\x00" * 60), "image/png", "cat.png"])
    chip = page.locator(".attach-chip")
    await expect(chip).to_have_class("attach-chip attach-failed")
    await expect(chip).to_contain_text("Windows program")
    await screenshot(page, "attachments-refused")
    await chip.get_by_role("button", name="Remove cat.png").click()
    await expect(chip).to_have_count(0)
    assert await db(Attachment.objects.count) == 0


def user_turns_with_files(requests) -> list[list]:
    """The last user turn of each request that carries files (title requests are plain text)."""
    last = [[m for m in r.json.get("messages", []) if m["role"] == "user"][-1:] for r in requests]
    return [t[0]["content"] for t in last if t and isinstance(t[0]["content"], list)]


async def test_an_edit_keeps_the_messages_files_unless_one_is_removed(web, alice, _provider_server):
    await db(default_persona)
    conv = await db(make_conversation, alice)
    page = await web.page(alice, f"/conversations/{conv.pk}/")
    await connected(page)
    await page.evaluate(DROP, [b64(b"first notes\n"), "text/plain", "a.txt"])
    await page.evaluate(DROP, [b64(b"second notes\n"), "text/plain", "b.txt"])
    await expect(page.locator(".attach-chip.attach-ready")).to_have_count(2)
    await send(page, "Read these")
    await reply_ends(page)
    seen = len(_provider_server.requests)

    # The edit form shows the message's two files; one is removed, the edit goes with the other.
    message = page.locator("article.msg-user").last
    await message.get_by_role("button", name="Edit").click()
    chips = message.locator(".edit-files .attach-chip")
    await expect(chips).to_have_count(2)
    await expect(chips.first).to_contain_text("a.txt")
    await screenshot(page, "attachments-edit")
    await message.get_by_role("button", name="Remove a.txt").click()
    await expect(chips).to_have_count(1)
    editor = page.get_by_role("textbox", name="Edit your message")
    await editor.fill("Read this one")
    await editor.press("Enter")
    await reply_ends(page)
    edited = page.locator("article.msg-user").last
    await expect(edited.locator(".msg-content")).to_have_text("Read this one")
    await expect(edited.locator(".file-chip")).to_have_count(1)
    await expect(edited.locator(".file-chip")).to_contain_text("b.txt")
    # The page can show the edit before its request reaches the provider (reply_ends may match the
    # earlier reply): wait for the request itself.
    for _ in range(100):
        turns = user_turns_with_files(_provider_server.requests[seen:])
        if turns:
            break
        await asyncio.sleep(0.1)
    [parts] = turns
    assert [p["text"] for p in parts] == ["File `b.txt`:\n```\nsecond notes\n```", "Read this one"]

    # The earlier version still has both, one switch away; the composer's tray was left alone.
    await edited.get_by_role("button", name="Previous version").click()
    await expect(page.locator("article.msg-user").last.locator(".file-chip")).to_have_count(2)
    await expect(page.locator("#attach-tray .attach-chip")).to_have_count(0)
    assert await web.csp_violations(page) == []
