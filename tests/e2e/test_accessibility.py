"""axe-core (vendored, tests/e2e/vendor/) on every page the site has, in states with real content:
a sidebar of several days, a long reply with code and a table, search results, an error shown, the
phone drawer open, the new-chat picker, sign-up and log-in, the admin pages the site adds; light and
dark. Any serious or critical violation fails. Also the quota refusal as a person reads it."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.async_api import expect

from conversations.models import Conversation, Message, UserQuota
from tests.conftest import sqlite_pass_only
from tests.e2e.conftest import db, screenshot
from tests.e2e.helpers import connected, send
from tests.e2e.test_page import CODE_REPLY
from tests.factories import add_message, default_persona, make_conversation, make_persona, make_user

pytestmark = pytest.mark.asyncio(loop_scope="session")

AXE = (Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js").read_text(encoding="utf-8")
FAILING_IMPACTS = {"serious", "critical"}


async def axe(web, page, state: str) -> list[dict]:
    """Run axe-core on the page as it is now; return its violations (all impacts)."""
    assert await web.csp_violations(page) == [], f"{state}: the page itself broke its CSP"
    if not await page.evaluate("typeof window.axe === 'object'"):
        # Through the DevTools protocol, not a <script> tag: the site's CSP refuses inline scripts.
        await page.evaluate(f"(() => {{ {AXE}\n }})()")
        await page.evaluate("typeof window.axe === 'object'")
    result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    # axe itself adds a <style> on the admin's pages, which their CSP refuses (the page was clean before,
    # above); and Django's admin pages name no icon, so the browser asks for /favicon.ico.
    web.errors[:] = [e for e in web.errors if "Applying inline style" not in e and not e.endswith("/favicon.ico")]
    await screenshot(page, f"a11y-{state}")
    return result["violations"]


def serious(violations: list[dict], state: str) -> list[str]:
    """The serious and critical violations, one readable line per failing element."""
    out = []
    for v in violations:
        if v["impact"] in FAILING_IMPACTS:
            for node in v["nodes"][:5]:
                where = f"{node['target']}: {node['failureSummary']}"
                out.append(f"[{state}] {v['id']} ({v['impact']}): {v['help']} at {where}")
    return out


def history(owner) -> Conversation:
    """Threads over several days (pinned, today, yesterday, last week, last month, months ago); returns
    the current one, whose reply is long, with code and a table."""
    default_persona()
    now = timezone.now()
    for title, days, pinned in [
        ("Pinned recipe", 40, True),
        ("Trip to Lisbon", 1, False),
        ("Tax questions", 4, False),
        ("Garden planning", 12, False),
        ("Old **markdown** notes", 95, False),
    ]:
        c = make_conversation(owner, title=title, pinned=pinned)
        add_message(c, role="user", content=f"About {title.lower()}: **bold** words and `code`")
        add_message(c, role="assistant", content=f"# {title}\n\nSome **markdown** reply.")
        Conversation.objects.filter(pk=c.pk).update(updated_at=now - dt.timedelta(days=days))
    current = make_conversation(owner, title="Reading JSON safely")
    add_message(current, role="user", content="How do I read a JSON file safely?")
    add_message(current, role="assistant", content=CODE_REPLY * 3)
    return current


def share(conversation: Conversation) -> str:
    """A share link's token for the conversation as it is now."""
    from accounts import services as account_services

    return account_services.share_create(conversation=conversation).token


def over_quota(user) -> None:
    UserQuota.objects.update_or_create(user=user, defaults={"daily_token_quota": 10})


@sqlite_pass_only
@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
async def test_the_chat_page_with_history_has_no_serious_violations(web, alice, dark):
    theme = "dark" if dark else "light"
    current = await db(history, alice)
    found: list[str] = []
    page = await web.page(alice, f"/conversations/{current.pk}/", dark=dark)
    await connected(page)
    await expect(page.locator("#thread-list .thread-group")).to_have_count(6)  # Pinned ... + a month name
    found += serious(await axe(web, page, f"history-{theme}"), f"history {theme}")

    # Search results: snippets with the match marked.
    await page.locator("#search-input").fill("markdown")
    await expect(page.locator("#thread-list .thread-snippet").first).to_be_visible()
    found += serious(await axe(web, page, f"search-{theme}"), f"search {theme}")
    await page.locator("#search-input").fill("")

    # A thread's menu open, then the delete confirmation.
    item = page.locator("#thread-list .thread", has_text="Trip to Lisbon")
    await item.hover()
    await item.locator("summary").click()
    await expect(item.get_by_role("button", name="Delete")).to_be_visible()
    found += serious(await axe(web, page, f"menu-{theme}"), f"menu {theme}")
    await page.keyboard.press("Escape")
    await item.hover()
    await item.locator("summary").click()
    await item.get_by_role("button", name="Delete").click()
    await expect(page.locator("#confirm-dialog")).to_be_visible()
    found += serious(await axe(web, page, f"confirm-{theme}"), f"confirm {theme}")
    await page.get_by_role("button", name="Cancel").click()
    await expect(page.locator("#confirm-dialog")).to_be_hidden()

    # An error shown: the daily quota is spent.
    await db(over_quota, alice)
    await send(page, "One more question")
    await expect(page.locator(".inline-error")).to_be_visible()
    found += serious(await axe(web, page, f"error-{theme}"), f"error {theme}")

    # A phone with the drawer open.
    phone = await web.page(alice, f"/conversations/{current.pk}/", dark=dark, width=375, height=740, is_mobile=True)
    await connected(phone)
    found += serious(await axe(web, phone, f"phone-{theme}"), f"phone {theme}")
    await phone.get_by_role("button", name="Open the conversation list").click()
    await expect(phone.get_by_role("complementary", name="Conversations")).to_be_visible()
    await phone.wait_for_timeout(250)  # the drawer's slide
    found += serious(await axe(web, phone, f"drawer-{theme}"), f"drawer {theme}")
    assert not found, "\n".join(found)


@sqlite_pass_only
@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
async def test_the_other_pages_have_no_serious_violations(web, alice, dark):
    theme = "dark" if dark else "light"
    await db(default_persona)
    await db(make_persona, "demo", name="Demo", description="Canned replies.", model="offline:demo")
    found: list[str] = []
    for path, state in [("/accounts/login/", "login"), ("/accounts/signup/", "signup")]:
        page = await web.page(None, path, dark=dark)
        found += serious(await axe(web, page, f"{state}-{theme}"), f"{state} {theme}")
    page = await web.page(alice, "/conversations/new/", dark=dark)
    await page.get_by_role("radio", name=re.compile("Demo")).check()
    await expect(page.locator("#offline-banner")).to_be_visible()
    found += serious(await axe(web, page, f"new-chat-{theme}"), f"new chat {theme}")
    # The account pages, and a shared thread as anyone with the link reads it.
    current = await db(history, alice)
    link = await db(share, current)
    for user, path, state in [
        (alice, "/account/", "account"),
        (alice, "/account/api-keys/", "api-keys"),
        (None, f"/s/{link}/", "shared"),
    ]:
        page = await web.page(user, path, dark=dark)
        assert (await page.request.get(path)).status == 200, path
        found += serious(await axe(web, page, f"{state}-{theme}"), f"{state} {theme}")
    staff = await db(make_user, "sam", is_staff=True, is_superuser=True)
    persona = await db(make_persona, "admin-made", name="Made in admin")
    for path, state in [
        ("/admin/conversations/persona/", "admin-personas"),
        (f"/admin/conversations/persona/{persona.pk}/change/", "admin-persona"),
        (f"/admin/conversations/persona/{persona.pk}/preview/", "admin-preview"),
        ("/admin/usage/", "admin-usage"),
    ]:
        page = await web.page(staff, path, dark=dark)
        found += serious(await axe(web, page, f"{state}-{theme}"), f"{state} {theme}")
    assert not found, "\n".join(found)


async def test_a_quota_refusal_says_when_it_resets_in_local_time(web, alice):
    """Not "Try again in 44697 s": the time it resets, in the reader's own time zone, and the text kept."""
    conversation = await db(make_conversation, alice)
    await db(over_quota, alice)
    await db(Message.objects.create, conversation=conversation, role="assistant", content="x" * 200, input_tokens=50)
    page = await web.page(alice, f"/conversations/{conversation.pk}/", timezone_id="Asia/Tokyo")
    await connected(page)
    await send(page, "Are you there?")
    error = page.locator(".inline-error")
    await expect(error).to_be_visible()
    text = await error.inner_text()
    # Midnight UTC is 09:00 in Tokyo.
    assert "resets" in text and re.search(r"\b(9:00|09:00)\b", text), text
    assert not re.search(r"\d{3,} ?s\b", text), text
    await expect(page.locator("#composer-input")).to_have_value("Are you there?")
    await screenshot(page, "quota")
