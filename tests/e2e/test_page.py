"""The page around the conversation in a real browser: the sidebar (rename, search, delete, pin, load
on scroll), keyboard-only use, autoscroll, the offline banner, dark theme and a phone-sized screen."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.utils import timezone
from playwright.async_api import expect

from conversations.models import Conversation
from tests.e2e.conftest import db, screenshot
from tests.e2e.helpers import connected, last_reply, reply_ends, send, until
from tests.factories import add_message, default_persona, make_conversation, make_persona
from tests.fakes.provider import Reply
from tests.live import Worker

pytestmark = pytest.mark.asyncio(loop_scope="session")

CODE_REPLY = """Here is how to read a JSON file safely:

```python
import json
from pathlib import Path


def load(path: str) -> dict:
    \"\"\"Parse a JSON file; raises ValueError on bad input.\"\"\"
    return json.loads(Path(path).read_text(encoding="utf-8"))
```

| function | reads | returns |
|:--|:--|--:|
| `json.load` | a file object | any |
| `json.loads` | a string | any |

1. open the file
2. parse it
3. check the shape

> Tip: validate the result before you trust it.
"""


def thread_with(owner, title: str, *texts: str, days_ago: float = 0, **fields) -> Conversation:
    """A conversation whose messages alternate user/assistant, last active `days_ago`."""
    conversation = make_conversation(owner, title=title, **fields)
    for i, text in enumerate(texts):
        add_message(conversation, role="user" if i % 2 == 0 else "assistant", content=text)
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now() - dt.timedelta(days=days_ago))
    return conversation


async def open_menu(page, title: str):
    item = page.locator("#thread-list .thread", has_text=title)
    await item.hover()
    await item.locator("summary").click()
    return item


async def test_it_renames_searches_pins_and_deletes_threads(web, alice, bob):
    lisbon = await db(thread_with, alice, "Trip to Lisbon", "Where do I eat pastéis de nata?", "In Belém.")
    await db(thread_with, alice, "Banana bread", "How hot is the oven?", "Bake it at 180C for an hour.", days_ago=1)
    await db(thread_with, alice, "Old notes", "Something from last month", "Noted.", days_ago=20)
    await db(make_conversation, alice, title="Never used")  # empty: not listed
    await db(thread_with, bob, "Bob's banana secret", "banana banana", "180C as well")  # not alice's

    page = await web.page(alice, f"/conversations/{lisbon.pk}/")
    threads = page.locator("#thread-list .thread")
    await expect(threads).to_have_count(3)
    await expect(page.locator("#thread-list .thread-group h2")).to_have_text(["Today", "Yesterday", "Previous 30 days"])
    await expect(page.locator("#thread-list")).not_to_contain_text("Never used")

    # Rename inline: Enter saves, the header follows; Escape cancels.
    item = await open_menu(page, "Trip to Lisbon")
    await item.get_by_role("button", name="Rename").click()
    field = page.get_by_role("textbox", name=re.compile("New title"))
    await expect(field).to_be_focused()
    await field.fill("Portugal plans")
    await field.press("Enter")
    await expect(page.locator("#thread-list .thread.current .thread-title")).to_have_text("Portugal plans")
    await expect(page.locator("#chat-title")).to_have_text("Portugal plans")
    item = await open_menu(page, "Banana bread")
    await item.get_by_role("button", name="Rename").click()
    await page.get_by_role("textbox", name=re.compile("New title")).fill("Something else")
    await page.keyboard.press("Escape")
    await expect(page.locator("#thread-list")).to_contain_text("Banana bread")
    assert await db(lambda: Conversation.objects.get(pk=lisbon.pk).title) == "Portugal plans"

    # Search message text and titles; another user's threads never show up.
    search = page.get_by_role("searchbox", name="Search conversations")
    await search.fill("180c")
    await expect(threads).to_have_count(1)
    await expect(threads.first).to_contain_text("Banana bread")
    await expect(threads.first.locator("mark")).to_have_text(re.compile("180C", re.I))
    await expect(page.locator("#search-status")).to_have_text("1 conversation found")
    await screenshot(page, "search")
    await search.fill("portugal")
    await expect(threads).to_have_count(1)
    await expect(threads.first).to_contain_text("Portugal plans")
    await search.fill("zzzz nothing")
    await expect(page.locator("#thread-list")).to_contain_text("No conversations match")
    await search.fill("")
    await expect(threads).to_have_count(3)

    # Pin to top.
    item = await open_menu(page, "Old notes")
    await item.get_by_role("button", name="Pin to top").click()
    await expect(page.locator("#thread-list .thread-group h2").first).to_have_text("Pinned")
    await expect(threads.first).to_contain_text("Old notes")

    # Delete with a confirmation: Cancel keeps it, Delete removes it.
    item = await open_menu(page, "Banana bread")
    await item.get_by_role("button", name="Delete").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Delete “Banana bread”")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(threads).to_have_count(3)
    item = await open_menu(page, "Banana bread")
    await item.get_by_role("button", name="Delete").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(threads).to_have_count(2)
    await page.reload()
    await expect(threads).to_have_count(2)
    assert not await db(lambda: Conversation.objects.filter(title="Banana bread").exists())
    assert web.dialogs == []  # our own dialog, never window.confirm

    # Deleting the open thread leaves for the chat page.
    item = await open_menu(page, "Portugal plans")
    await item.get_by_role("button", name="Delete").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(page).to_have_url(re.compile(r"/conversations/[0-9a-f-]{36}/$"))
    await expect(page.locator("#chat-title")).to_have_text("Old notes")
    assert await web.csp_violations(page) == []


async def test_it_loads_more_threads_as_the_sidebar_scrolls(web, alice):
    def many():
        persona = default_persona()
        now = timezone.now()
        for i in range(75):
            c = Conversation.objects.create(owner=alice, persona=persona, title=f"Thread {i:03d}")
            add_message(c, role="user", content=f"message {i}")
            Conversation.objects.filter(pk=c.pk).update(updated_at=now - dt.timedelta(hours=i))

    await db(many)
    page = await web.page(alice, "/")
    threads = page.locator("#thread-list .thread")
    await expect(threads).to_have_count(50)
    await page.locator("#thread-list .threads-more").scroll_into_view_if_needed()
    await expect(threads).to_have_count(75)
    titles = await page.locator("#thread-list .thread-title").all_text_contents()
    assert titles == [f"Thread {i:03d}" for i in range(75)]
    # No group heading twice across pages.
    headings = await page.locator("#thread-list .thread-group h2").all_text_contents()
    assert len(headings) == len(set(headings))


async def test_it_works_with_the_keyboard_alone(web, alice, _provider_server):
    conversation = await db(thread_with, alice, "Keyboard thread", "Hi", "Hello!")
    _provider_server.script(Reply(text="Typed and sent.", token_delay=0.01))
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await connected(page)
    composer = page.locator("#composer-input")
    await expect(composer).to_be_focused()
    await page.keyboard.type("First line")
    await page.keyboard.press("Shift+Enter")
    await page.keyboard.type("second line")
    await expect(composer).to_have_value("First line\nsecond line")
    await page.keyboard.press("Enter")
    await expect(page.locator("article.msg-user .msg-content").last).to_have_text("First line\nsecond line")
    await reply_ends(page)
    await expect(last_reply(page).locator(".msg-content")).to_have_text("Typed and sent.")

    # The composer grows with the text and warns near the length limit (CHAT_MAX_MESSAGE_CHARS, 20,000).
    one_line = await composer.evaluate("e => e.offsetHeight")
    await composer.fill("line\n" * 6)
    assert await composer.evaluate("e => e.offsetHeight") > one_line
    counter = page.locator("#char-count")
    await expect(counter).to_have_text("")
    await composer.fill("x" * 18_500)
    await expect(counter).to_have_text("18,500 / 20,000 characters")
    await expect(page.locator("#send")).to_be_enabled()
    await composer.fill("x" * 20_001)
    await expect(counter).to_have_class(re.compile("over"))
    await expect(page.locator("#send")).to_be_disabled()
    await composer.fill("")

    # Tab from the top of the page to the thread's menu, open it, rename, all by keyboard.
    await page.locator("body").focus()
    summary = page.locator("#thread-list .thread.current summary")
    for _ in range(12):
        await page.keyboard.press("Tab")
        if await summary.evaluate("e => e === document.activeElement"):
            break
    await expect(summary).to_be_focused()
    await page.keyboard.press("Enter")
    rename = page.locator("#thread-list .thread.current").get_by_role("button", name="Rename")
    await page.keyboard.press("Tab")
    await expect(rename).to_be_focused()
    await page.keyboard.press("Enter")
    field = page.get_by_role("textbox", name=re.compile("New title"))
    await expect(field).to_be_focused()
    await page.keyboard.press("Control+A")
    await page.keyboard.type("Renamed by keyboard")
    await page.keyboard.press("Enter")
    await expect(page.locator("#chat-title")).to_have_text("Renamed by keyboard")

    # Every control has a name a screen reader can say.
    unnamed = await page.evaluate(
        """[...document.querySelectorAll('button, a[href], input, textarea, summary, select')]
        .filter((e) => e.offsetParent !== null)
        .filter((e) => !(e.getAttribute('aria-label') || e.textContent.trim() || e.labels?.length || e.title))
        .map((e) => e.outerHTML.slice(0, 80))"""
    )
    assert unnamed == []
    landmarks = await page.evaluate("[...document.querySelectorAll('main, nav, aside, header, [role=search]')].length")
    assert landmarks >= 5


async def test_it_follows_the_reply_until_the_reader_scrolls_up(web, alice, _provider_server):
    texts = []
    for i in range(12):
        texts += [f"Question {i}?", CODE_REPLY]
    conversation = await db(thread_with, alice, "Long thread with code", *texts)
    long_reply = "\n\n".join(f"Paragraph {i}: " + " ".join(["streaming"] * 30) for i in range(30))
    _provider_server.script(Reply(text=long_reply, token_delay=0.004))
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await connected(page)
    at_bottom = (
        "(() => { const m = document.getElementById('messages');"
        " return m.scrollHeight - m.scrollTop - m.clientHeight < 50; })()"
    )
    assert await page.evaluate(at_bottom)  # opens on the latest message
    await expect(page.locator(".code-block").first.locator(".code-copy")).to_be_attached()
    await screenshot(page, "long-thread-code")

    await send(page, "Write a lot")
    await until(
        page,
        "document.querySelector('article.msg-assistant:last-of-type .msg-content')?.textContent.length > 1500",
        timeout=30,  # generous: a shared, loaded machine (the other xdist worker runs beside this one)
    )
    assert await page.evaluate(at_bottom)  # followed the reply so far
    await page.locator("#messages").hover()
    await page.mouse.wheel(0, -1500)
    await expect(page.locator("#jump")).to_be_visible()
    top = await page.evaluate("document.getElementById('messages').scrollTop")
    await page.wait_for_timeout(400)
    assert abs(await page.evaluate("document.getElementById('messages').scrollTop") - top) < 5  # left alone
    await page.get_by_role("button", name="Jump to latest").click()
    await until(page, at_bottom)
    await reply_ends(page)
    await until(page, at_bottom)
    await expect(page.locator("#jump")).to_be_hidden()


async def test_it_says_when_the_offline_demo_model_is_in_use(web, alice):
    demo = await db(make_persona, "demo", name="Demo", model="offline:demo")
    offline = await db(make_conversation, alice, persona=demo)
    online = await db(thread_with, alice, "Real model", "Hi", "Hello")
    page = await web.page(alice, f"/conversations/{offline.pk}/")
    banner = page.get_by_role("note").filter(has_text="Offline demo model")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("demo text")
    await expect(banner).not_to_contain_text("OPENAI_API_KEY")  # server settings are for staff
    await connected(page)
    await send(page, "Hello demo")
    await reply_ends(page)
    await expect(last_reply(page)).to_contain_text("offline demo model")
    await page.goto(f"/conversations/{online.pk}/")
    await expect(page.get_by_role("note").filter(has_text="Offline demo model")).to_be_hidden()


async def test_it_fits_a_phone_with_the_sidebar_as_a_drawer(web, alice):
    other = await db(thread_with, alice, "Other thread", "Hello from the other one", "Hi!", days_ago=1)
    current = await db(thread_with, alice, "Phone thread", "What is a CRDT?", CODE_REPLY)
    page = await web.page(alice, f"/conversations/{current.pk}/", width=375, height=740, is_mobile=True, has_touch=True)
    await connected(page)
    sidebar = page.get_by_role("complementary", name="Conversations")
    await expect(sidebar).to_be_hidden()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 375
    await screenshot(page, "phone")
    menu = page.get_by_role("button", name="Open the conversation list")
    await menu.click()
    await expect(sidebar).to_be_visible()
    await expect(menu).to_have_attribute("aria-expanded", "true")
    await page.wait_for_timeout(250)  # the drawer's slide
    await screenshot(page, "phone-drawer")
    await page.keyboard.press("Escape")
    await expect(sidebar).to_be_hidden()
    await expect(menu).to_be_focused()
    await menu.click()
    await sidebar.get_by_role("link", name=re.compile("Other thread")).click()
    await expect(page).to_have_url(re.compile(str(other.pk)))
    await expect(page.get_by_role("complementary", name="Conversations")).to_be_hidden()


async def test_it_follows_a_dark_system_theme(web, alice):
    conversation = await db(thread_with, alice, "Dark thread", "Show me code", CODE_REPLY)
    page = await web.page(alice, f"/conversations/{conversation.pk}/", dark=True)
    await connected(page)
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(13, 17, 23)"
    await screenshot(page, "dark")
    phone = await web.page(alice, f"/conversations/{conversation.pk}/", dark=True, width=375, height=740)
    await connected(phone)
    await screenshot(phone, "phone-dark")


async def test_it_shows_the_models_title_once_the_background_task_writes_it(
    web, alice, server, _provider_server, tmp_path
):
    conversation = await db(make_conversation, alice)
    # The reply streams first; the worker's title request then gets the second answer.
    _provider_server.script(Reply(text="The sea is wide and deep."), Reply(text="Poem About the Sea"))
    env = {k: server.env[k] for k in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CHAT_DEFAULT_MODEL")}
    worker = Worker(tmp_path, **env).start()
    try:
        page = await web.page(alice, f"/conversations/{conversation.pk}/")
        await connected(page)
        await send(page, "write a poem about the sea for me please")
        await reply_ends(page)
        # At once: the first words of the first message.
        current = page.locator("#thread-list .thread.current .thread-title")
        await expect(current).to_have_text("write a poem about the sea for me")
        # Then the model's title, in the sidebar and the header, without a reload.
        # (A generous wait: the worker process starts Django and polls for tasks; slow on a loaded machine.)
        await expect(current).to_have_text("Poem About the Sea", timeout=60_000)
        await expect(page.locator("#chat-title")).to_have_text("Poem About the Sea")
    finally:
        worker.stop()
    asked = [str(r.json.get("messages")) for r in _provider_server.requests]
    assert len(asked) == 2 and "short title" in asked[1]  # the reply, then the title task


async def test_it_copies_a_reply_as_markdown_and_a_code_block_as_code(web, alice):
    conversation = await db(thread_with, alice, "Copy thread", "Show me code", CODE_REPLY)
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await connected(page)
    reply = last_reply(page)
    await reply.hover()
    await reply.get_by_role("button", name="Copy", exact=True).click()
    await expect(reply.get_by_role("button", name="Copied")).to_be_visible()
    assert await page.evaluate("navigator.clipboard.readText()") == CODE_REPLY
    await reply.get_by_role("button", name="Copy python code").click()
    copied = await page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("import json\n") and "```" not in copied
