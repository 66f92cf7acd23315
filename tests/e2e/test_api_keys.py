"""The API keys page in a real browser: make a key (shown once), see it listed by prefix, revoke it."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from api.models import ApiKey
from tests.e2e.conftest import db, screenshot

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_it_makes_shows_once_and_revokes_a_key(web, alice):
    page = await web.page(alice, "/account/api-keys/")
    await expect(page.get_by_text("No keys yet.")).to_be_visible()
    await page.get_by_label("Name").fill("laptop scripts")
    await page.get_by_role("button", name="Create key").click()
    shown = page.get_by_label("Your new API key")
    await expect(shown).to_have_value(re.compile(r"^csk-[A-Za-z0-9_-]{32,}$"))
    key = await shown.input_value()
    await screenshot(page, "api-key-created")
    row = await db(ApiKey.objects.get, user=alice)
    assert key.startswith(row.prefix)
    await page.goto("/account/api-keys/")
    await expect(page.get_by_label("Your new API key")).to_have_count(0)  # once only
    assert key not in await page.content()
    await page.get_by_role("button", name="Revoke laptop scripts").click()
    await expect(page.get_by_text("Revoked “laptop scripts”")).to_have_count(1)  # one notice, the site's toast
    await expect(page.locator("tr.revoked")).to_contain_text("revoked")
    await screenshot(page, "api-key-revoked")
    assert (await db(ApiKey.objects.get, pk=row.pk)).revoked_at is not None
    assert not await web.csp_violations(page)
