"""Single sign-on in a real browser: the login page's "Sign in with …" button, through the test
identity provider (tests/fakes/oidc.py) and back, onto the chat page signed in."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from playwright.async_api import expect

from tests.e2e.conftest import db, screenshot
from tests.factories import default_persona
from tests.fakes.oidc import FakeOIDC
from tests.live import LiveServer

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def idp():
    with FakeOIDC(client_id="chat-site", client_secret="e2e-secret") as provider:
        yield provider


@pytest.fixture(scope="module")
def server(django_db_setup, _provider_server, tmp_path_factory, idp):
    """A daphne configured for SSO from its environment, as an operator would; local sign-up off."""
    live = LiveServer(
        tmp_path_factory.mktemp("e2e-sso"),
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=_provider_server.openai_base_url,
        CHAT_DEFAULT_MODEL="openai:gpt-test",
        OIDC_SERVER_URL=idp.issuer,
        OIDC_CLIENT_ID="chat-site",
        OIDC_CLIENT_SECRET="e2e-secret",
        OIDC_PROVIDER_NAME="Acme ID",
        OIDC_GROUPS_CLAIM="roles",
        ACCOUNT_ALLOW_SIGNUP="false",
        LOG_LEVEL="WARNING",
    ).start()
    yield live
    live.stop()


async def test_it_signs_in_with_the_identity_provider_and_lands_on_the_chat(web, idp):
    # An earlier test's flush may have taken the migrated default persona: the picker needs one.
    await db(default_persona)
    idp.user = {
        "sub": "dana-42",
        "email": "dana@example.com",
        "email_verified": True,
        "preferred_username": "dana",
        "roles": ["research"],
    }
    page = await web.page(None, "/accounts/login/")
    button = page.get_by_role("button", name="Sign in with Acme ID")
    await expect(button).to_be_visible()
    await screenshot(page, "sso-login")
    await button.click()
    await page.wait_for_url(f"{web.server.url}/", timeout=15_000)
    await expect(page.locator(".who")).to_contain_text("dana")
    await expect(page.locator("#composer, form textarea").first).to_be_visible()
    await screenshot(page, "sso-signed-in")
    user = await db(get_user_model().objects.get, email="dana@example.com")
    assert await db(lambda: list(user.groups.values_list("name", flat=True))) == ["research"]
    assert "GET /authorize" in idp.requests and "POST /token" in idp.requests
    # Local sign-up is off on this site: the sign-up page says so.
    await page.context.clear_cookies()
    await page.goto("/accounts/signup/")
    await expect(page.get_by_text("closed", exact=False).first).to_be_visible()
