"""The page under uvicorn, the README's production option: its scripts, styles and socket load (no page
error, no CSP violation), a reply streams, and a socket dropped mid-reply resumes to the exact text."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.e2e.conftest import db
from tests.e2e.helpers import assembled_text, connected, last_reply, reply_through_dropped_sockets
from tests.factories import make_conversation
from tests.fakes.provider import Reply
from tests.live import LiveServer

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def server(django_db_setup, _provider_server, tmp_path_factory):
    """This module's one server: uvicorn with the README's options (tests/live.py), as e2e's daphne is set up."""
    live = LiveServer(
        tmp_path_factory.mktemp("e2e-uvicorn"),
        name="uvicorn",
        server="uvicorn",
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=_provider_server.openai_base_url,
        CHAT_DEFAULT_MODEL="openai:gpt-test",
        CHAT_FLUSH_INTERVAL="0.2",
        LOG_LEVEL="WARNING",
    ).start()
    yield live
    live.stop()


async def test_the_page_streams_and_resumes_a_dropped_socket_under_uvicorn(web, alice, _provider_server):
    conversation = await db(make_conversation, alice)
    text = "Ünïcödé 漢字 🎉 " + " ".join(f"u{i}" for i in range(160)) + " end 🎈"
    _provider_server.script(Reply(text=text, token_delay=0.015))
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await connected(page)
    reply_id = await reply_through_dropped_sockets(page, drop_at=(60,))

    assert await assembled_text(page, reply_id) == text  # what the deltas built: exactly the stored reply
    await expect(last_reply(page).locator(".msg-content")).to_have_text(text)
    assert await web.csp_violations(page) == []
    # A reload renders the stored reply (the page's HTTP side under uvicorn).
    await page.reload()
    await connected(page)
    await expect(last_reply(page).locator(".msg-content")).to_have_text(text)
