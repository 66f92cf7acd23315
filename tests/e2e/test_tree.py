"""Versions in a real browser: edit an earlier message, switch between versions with `‹ i / n ›`
(mouse and keyboard), the live region says which version shows, and a reload shows the same one."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from conversations.models import Message, Summary
from tests.e2e.conftest import db, screenshot
from tests.e2e.helpers import REPLY_TIMEOUT, connected, last_reply, reply_ends, send
from tests.factories import make_conversation, make_turns
from tests.fakes.provider import Reply

pytestmark = pytest.mark.asyncio(loop_scope="session")


def contents(page, role: str):
    return page.locator(f"article.msg-{role} .msg-content")


async def test_it_edits_an_earlier_message_and_switches_between_its_versions(web, alice, _provider_server):
    conversation = await db(make_conversation, alice)
    _provider_server.script(
        Reply(text="Answer one."),
        Reply(text="Answer two."),
        Reply(text="Answer three."),
        Reply(text="Answer to the edited one."),
    )
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await connected(page)
    for n, text in enumerate(("Question one", "Question two", "Question three"), start=1):
        await send(page, text)
        # The new reply, not the previous one (whose status is already `complete`).
        await expect(page.locator("article.msg-assistant")).to_have_count(n, timeout=REPLY_TIMEOUT)
        await reply_ends(page)
    await expect(contents(page, "user")).to_have_text(["Question one", "Question two", "Question three"])

    # Escape cancels an edit: the original stays, nothing is sent.
    first = page.locator("article.msg-user").first
    await first.hover()
    await first.get_by_role("button", name="Edit").click()
    editor = page.get_by_role("textbox", name="Edit your message")
    await editor.fill("Something else")
    await editor.press("Escape")
    await expect(editor).to_have_count(0)
    await expect(contents(page, "user").first).to_have_text("Question one")

    # Edit the first message (not the last): a new version, the path below it starts again.
    await first.hover()
    await first.get_by_role("button", name="Edit").click()
    await editor.fill("Question one, edited")
    await editor.press("Enter")
    await expect(last_reply(page).locator(".msg-content")).to_have_text(
        "Answer to the edited one.", timeout=REPLY_TIMEOUT
    )
    await reply_ends(page)
    await expect(contents(page, "user")).to_have_text(["Question one, edited"])
    edited = page.locator("article.msg-user").first
    versions = edited.get_by_role("group", name="Versions")
    await expect(versions.locator(".version-count")).to_have_text("2 / 2")
    await expect(versions.get_by_role("button", name="Next version")).to_be_disabled()
    await screenshot(page, "tree-version-2-of-2")

    # Back to version 1: its whole path returns, without a reload.
    await page.evaluate("window.__noReload = 1")
    await versions.get_by_role("button", name="Previous version").click()
    await expect(contents(page, "user")).to_have_text(["Question one", "Question two", "Question three"])
    await expect(contents(page, "assistant")).to_have_text(["Answer one.", "Answer two.", "Answer three."])
    first = page.locator("article.msg-user").first
    await expect(first.locator(".version-count")).to_have_text("1 / 2")
    await expect(page.locator("#announcer")).to_contain_text("Version 1 of 2")
    assert await page.evaluate("window.__noReload") == 1  # the same document: no reload
    # The keyboard: focus stays on the versions control; Next version with Enter.
    focused = await page.evaluate("document.activeElement && document.activeElement.getAttribute('aria-label')")
    assert focused in {"Previous version", "Next version"}
    await screenshot(page, "tree-version-1-of-2")

    await page.reload()
    await connected(page)
    await expect(contents(page, "user")).to_have_text(["Question one", "Question two", "Question three"])
    await expect(page.locator("article.msg-user").first.locator(".version-count")).to_have_text("1 / 2")

    # Keyboard only: Tab to "Next version", Enter; the live region says which version shows.
    next_button = page.locator("article.msg-user").first.get_by_role("button", name="Next version")
    await next_button.focus()
    await page.keyboard.press("Enter")
    await expect(contents(page, "user")).to_have_text(["Question one, edited"])
    await expect(page.locator("#announcer")).to_contain_text("Version 2 of 2")
    await expect(page.locator("article.msg-user").first.locator(".version-count")).to_have_text("2 / 2")
    await page.reload()
    await expect(contents(page, "user")).to_have_text(["Question one, edited"])
    await screenshot(page, "tree-after-reload")
    assert await web.csp_violations(page) == []


async def test_it_regenerates_an_earlier_reply_into_versions(web, alice, _provider_server):
    conversation = await db(make_conversation, alice)
    _provider_server.script(Reply(text="First take."), Reply(text="Later answer."), Reply(text="Second take."))
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await connected(page)
    for n, text in enumerate(("Question one", "Question two"), start=1):
        await send(page, text)
        # The new reply, not the previous one (whose status is already `complete`): else Regenerate
        # below is clicked while "Later answer." still streams, and is refused as busy.
        await expect(page.locator("article.msg-assistant")).to_have_count(n, timeout=REPLY_TIMEOUT)
        await reply_ends(page)
    # Regenerate the first reply, not the last: every reply has the button.
    reply = page.locator("article.msg-assistant").first
    await reply.hover()
    await reply.get_by_role("button", name="Regenerate").click()
    await expect(contents(page, "assistant")).to_have_text(["Second take."], timeout=REPLY_TIMEOUT)
    await reply_ends(page)
    await expect(last_reply(page).locator(".version-count")).to_have_text("2 / 2")
    await last_reply(page).get_by_role("button", name="Previous version").click()
    await expect(contents(page, "assistant")).to_have_text(["First take.", "Later answer."])
    await screenshot(page, "tree-regenerated-reply")


def _summarized_thread_with_branches(owner):
    """Eight turns summarized through the fourth, the third asked again (a branch before the summary)."""
    conversation = make_conversation(owner)
    turns = make_turns(conversation, 8)
    Summary.objects.create(conversation=conversation, through=turns[3], text="What was said before.\n\nIn short.")
    Message.objects.create(conversation=conversation, role="user", content="Asked another way", parent=turns[1])
    return conversation, [t.pk for t in turns]


async def test_the_summary_divider_follows_the_path_across_switches(web, alice):
    conversation, turns = await db(_summarized_thread_with_branches, alice)
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await connected(page)
    divider = page.locator("#messages > .summary-divider")
    after = "(() => { const d = document.querySelector('#messages > .summary-divider');"
    after += " return d && d.previousElementSibling.id; })()"
    await expect(divider).to_have_count(1)
    assert await page.evaluate(after) == f"m{turns[3]}"
    await divider.locator("summary").click()  # opened: it stays open across switches
    await page.evaluate("window.__noReload = 1")

    # The third message's other version: a branch made before the summary's message has no divider.
    third = page.locator(f"#m{turns[2]}")
    await third.get_by_role("button", name="Next version").click()
    await expect(contents(page, "user")).to_have_text(["user0w0 user0w1 user0w2 user0w3 user0w4", "Asked another way"])
    await expect(divider).to_have_count(0)

    # Back: the divider is where it was, after the same message, still open; no reload.
    await page.locator("article.msg-user").last.get_by_role("button", name="Previous version").click()
    await expect(contents(page, "user")).to_have_count(4)
    await expect(divider).to_have_count(1)
    assert await page.evaluate(after) == f"m{turns[3]}"
    await expect(divider).to_have_attribute("open", "")
    await expect(divider.locator(".summary-text p")).to_have_text(
        ["The model no longer sees the messages above word for word; it gets this summary instead:",
         "What was said before.", "In short."]
    )  # fmt: skip
    assert await page.evaluate("window.__noReload") == 1
    await screenshot(page, "tree-summary-divider-after-switch")
    assert await web.csp_violations(page) == []
