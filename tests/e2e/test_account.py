"""The settings page, the theme switch and share links in a real browser (screenshots under test-artifacts/)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from playwright.async_api import expect

from accounts.models import Profile
from tests.conftest import sqlite_pass_only
from tests.e2e.conftest import db, screenshot
from tests.e2e.test_page import CODE_REPLY, open_menu, thread_with

pytestmark = pytest.mark.asyncio(loop_scope="session")

DARK_BG, LIGHT_BG = "rgb(13, 17, 23)", "rgb(255, 255, 255)"


async def background(page) -> str:
    """The page's background once its stylesheet applies (transparent until then, on a busy machine)."""
    # Polled from here: wait_for_function evaluates a string, which the page's CSP (no unsafe-eval) refuses.
    for _ in range(100):
        colour = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        if colour != "rgba(0, 0, 0, 0)":
            return colour
        await asyncio.sleep(0.1)
    return colour


async def test_the_settings_page_is_reached_from_the_chat_page(web, alice):
    conversation = await db(thread_with, alice, "A thread", "Hello", "Hi there!")
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await page.get_by_role("link", name=re.compile("alice")).click()
    await expect(page).to_have_url(re.compile("/account/$"))
    await expect(page.get_by_role("heading", name="Settings", level=1)).to_be_visible()
    for section in ("Profile", "Theme", "Shared links", "Export", "Import", "Delete account"):
        await expect(page.get_by_role("heading", name=section, level=2)).to_be_visible()
    await page.get_by_label("Display name").fill("Alice L.")
    await page.get_by_role("button", name="Save profile").click()
    await expect(page.get_by_role("status")).to_contain_text("Your profile is saved.")
    await screenshot(page, "account-settings")
    await page.get_by_role("button", name="Dismiss this notice").click()
    await expect(page.locator(".toasts")).to_have_count(0)
    await page.get_by_role("link", name="Back to the chat").click()
    await expect(page.locator(".sidebar-foot .who")).to_contain_text("Alice L.")
    assert await web.csp_violations(page) == []


async def test_the_theme_switch_applies_on_every_page(web, alice):
    conversation = await db(thread_with, alice, "Theme thread", "Show me code", CODE_REPLY)
    page = await web.page(alice, "/account/")  # a light system
    assert await background(page) == LIGHT_BG
    await page.get_by_label("Dark").check()
    await page.get_by_role("button", name="Save theme").click()
    await expect(page.get_by_role("status")).to_contain_text("Theme saved.")
    assert await background(page) == DARK_BG
    await screenshot(page, "account-dark")
    await page.goto(f"/conversations/{conversation.pk}/")
    assert await background(page) == DARK_BG
    await screenshot(page, "chat-dark-by-choice")
    assert await db(lambda: Profile.objects.get(user=alice).theme) == "dark"
    # "Light" wins over a dark system; "system" follows it again.
    dark_system = await web.page(alice, "/account/", dark=True)
    await dark_system.get_by_label("Light").check()
    await dark_system.get_by_role("button", name="Save theme").click()
    await expect(dark_system.get_by_role("status")).to_contain_text("Theme saved.")
    assert await background(dark_system) == LIGHT_BG
    await dark_system.get_by_label("Same as my system").check()
    await dark_system.get_by_role("button", name="Save theme").click()
    await expect(dark_system.get_by_role("status")).to_contain_text("Theme saved.")
    assert await background(dark_system) == DARK_BG


async def test_a_shared_thread_opens_in_a_fresh_context_and_dies_when_revoked(web, alice):
    conversation = await db(thread_with, alice, "Shared thread", "How do I read JSON?", CODE_REPLY)
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    item = await open_menu(page, "Shared thread")
    await item.get_by_role("button", name="Share a link…").click()
    toast = page.get_by_role("status").filter(has_text="Anyone with this link")
    await expect(toast).to_be_visible()
    await screenshot(page, "share-created")
    url = re.search(r"http://\S+/s/[\w-]+/", await toast.inner_text()).group(0)

    reader = await web.page(None, url)  # a fresh context: not signed in
    await expect(reader.get_by_role("heading", name="Shared thread", level=1)).to_be_visible()
    await expect(reader.locator("article.msg-user")).to_have_text(re.compile("How do I read JSON?"))
    await expect(reader.locator("article.msg-assistant pre code")).to_contain_text("import json")
    assert await reader.locator("textarea, #composer").count() == 0
    assert await reader.locator('meta[name="robots"]').get_attribute("content") == "noindex, nofollow"
    await expect(reader.get_by_role("link", name="Sign in")).to_be_visible()
    assert await web.csp_violations(reader) == []
    await screenshot(reader, "share-reader")

    settings = await web.page(alice, "/account/")
    await settings.get_by_role("button", name="Revoke the link to “Shared thread”").click()
    await expect(settings.get_by_role("status")).to_contain_text("Revoked 1 link")
    response = await reader.goto(url)
    assert response.status == 404
    await reader.wait_for_load_state("load")
    await reader.close()  # no more requests from it (Django's plain 404 page makes Chromium ask for /favicon.ico)
    web.errors[:] = [e for e in web.errors if "404" not in e]  # the revoked link's own 404, and the icon's


async def test_a_thread_exports_from_its_menu_and_an_export_imports_on_the_settings_page(web, alice, tmp_path):
    conversation = await db(thread_with, alice, "Exported thread", "How do I read JSON?", CODE_REPLY)
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    item = await open_menu(page, "Exported thread")
    async with page.expect_download() as download_info:
        await item.get_by_role("link", name="Export as Markdown").click()
    download = await download_info.value
    assert download.suggested_filename.endswith(".md")
    text = (await download.path()).read_text()
    assert text.startswith("# Exported thread\n") and "## User\n\nHow do I read JSON?" in text

    settings = await web.page(alice, "/account/")
    fixture = Path(__file__).parents[1] / "fixtures" / "chatgpt_conversations.json"
    await settings.get_by_label("Export file").set_input_files(str(fixture))
    await settings.get_by_role("button", name="Import", exact=True).click()
    await expect(settings.get_by_role("status")).to_contain_text(
        "Imported 1 conversation from chatgpt_conversations.json"
    )
    await screenshot(settings, "account-imported")
    await settings.goto("/")
    await expect(settings.locator("#thread-list")).to_contain_text("Sourdough starter help")
    broken = tmp_path / "conversations.json"
    broken.write_bytes(fixture.read_bytes()[:500])
    await settings.goto("/account/")
    await settings.get_by_label("Export file").set_input_files(str(broken))
    await settings.get_by_role("button", name="Import", exact=True).click()
    await expect(settings.get_by_role("status")).to_contain_text("Nothing was imported.")
    await expect(settings.get_by_role("status")).to_contain_text("is not valid JSON")
    await screenshot(settings, "account-import-error")
    web.errors[:] = [e for e in web.errors if "400" not in e]  # the refused upload's own status


@sqlite_pass_only
@pytest.mark.parametrize("theme", ["light", "dark"])
async def test_the_new_pages_have_no_serious_axe_violations(web, alice, theme):
    from accounts.models import ImportJob
    from accounts.services import profile_update, share_create
    from tests.e2e.test_accessibility import axe, serious

    conversation = await db(thread_with, alice, "Axe thread", "How do I read JSON?", CODE_REPLY)
    link = await db(share_create, conversation=conversation)
    await db(lambda: ImportJob.objects.create(owner=alice, filename="old.json", status="failed", error="Bad JSON."))
    await db(lambda: ImportJob.objects.create(owner=alice, filename="big.json", status="running", total=3))
    await db(profile_update, user=alice, theme=theme)
    found: list[str] = []
    page = await web.page(alice, "/account/")
    await page.get_by_label("Display name").fill("Alice")
    await page.get_by_role("button", name="Save profile").click()  # a notice on the page
    await expect(page.get_by_role("status").first).to_contain_text("saved")
    found += serious(await axe(web, page, f"account-{theme}"), f"/account/ {theme}")
    for path in ("/account/delete/", "/accounts/email/", "/accounts/password/change/", "/account/api-keys/"):
        await page.goto(path)
        found += serious(await axe(web, page, f"{path.strip('/').replace('/', '-')}-{theme}"), f"{path} {theme}")
    await page.goto(f"/conversations/{conversation.pk}/")
    item = await open_menu(page, "Axe thread")
    await expect(item.get_by_role("link", name="Export as JSON")).to_be_visible()
    found += serious(await axe(web, page, f"chat-thread-menu-{theme}"), f"thread menu {theme}")
    reader = await web.page(None, f"/s/{link.token}/", dark=theme == "dark")
    found += serious(await axe(web, reader, f"share-{theme}"), f"/s/ {theme}")
    signed_in_reader = await web.page(alice, f"/s/{link.token}/")
    found += serious(await axe(web, signed_in_reader, f"share-signed-in-{theme}"), f"/s/ signed in {theme}")
    assert not found, "\n".join(found)
