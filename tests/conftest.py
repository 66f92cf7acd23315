"""Shared fixtures: named users, the fake provider over loopback, websocket clients on the real stack."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from tests.factories import make_user

# A slow test whose subject does not depend on the database or the channel layer (a page's
# accessibility, an upload's memory) runs in CI's SQLite pass only; the PostgreSQL + Redis pass runs
# the same suite again for what does depend on them, and CI's whole run must stay under 20 minutes.
sqlite_pass_only = pytest.mark.skipif(
    os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="does not depend on the database: CI's SQLite pass runs it",
)


@pytest.fixture(autouse=True)
def _fast_chat(settings):
    """No artificial delays in tests; short retry backoff."""
    settings.CHAT_OFFLINE_WORD_DELAY = 0
    settings.CHAT_RETRY_BASE_DELAY = 0.01
    settings.CHAT_RETRY_MAX_DELAY = 0.2
    settings.CHAT_FLUSH_INTERVAL = 0.2
    settings.CHAT_RATE_LIMIT = "1000/m"


def _forget_counters():
    from django.core.cache import cache
    from django_redis.cache import RedisCache

    if isinstance(cache, RedisCache):
        # Redis may be shared with other test runs: drop only our counters, not the database.
        cache.delete_pattern("chat:*")
    else:
        cache.clear()


@pytest.fixture(autouse=True)
def _clear_cache():
    _forget_counters()
    yield
    _forget_counters()


@pytest.fixture(scope="session", autouse=True)
def _drop_stray_connections(django_db_setup, django_db_blocker):
    """Worker threads keep PostgreSQL connections open; end them so the test database can be dropped."""
    yield
    from django.db import connection

    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture
def alice(db):
    return make_user("alice")


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def charlie(db):
    return make_user("charlie", is_staff=True, is_superuser=True)


@pytest.fixture(scope="session")
def _provider_server():
    from tests.fakes.provider import FakeProvider

    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def fake_provider(_provider_server, settings):
    """The fake provider server, cleared, with both SDKs pointed at it and the site defaulting to OpenAI."""
    _provider_server.clear()
    settings.OPENAI_API_KEY = "test-key"
    settings.OPENAI_BASE_URL = _provider_server.openai_base_url
    settings.ANTHROPIC_API_KEY = "test-key"
    settings.ANTHROPIC_BASE_URL = _provider_server.anthropic_base_url
    settings.CHAT_DEFAULT_MODEL = "openai:gpt-test"
    return _provider_server


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


class Socket:
    """A websocket client on the real ASGI stack (session auth, Origin check), with frame helpers."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.c = communicator
        self.frames: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        await self.c.send_to(text_data=json.dumps(frame))

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        frame = json.loads(await self.c.receive_from(timeout=timeout))
        self.frames.append(frame)
        return frame

    async def until(self, type_: str, timeout: float = 10, **match: Any) -> dict[str, Any]:
        """Receive frames until one of `type_` (matching `match`) arrives; return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(timeout=max(0.05, deadline - loop.time()))
            if frame["type"] == type_ and all(frame.get(k) == v for k, v in match.items()):
                return frame

    async def send_message(self, content: str, client_id: str | None = None) -> str:
        client_id = client_id or str(uuid.uuid4())
        await self.send({"type": "send", "client_id": client_id, "content": content})
        return client_id

    def text_of(self, message_id: int) -> str:
        """The reply's text as a client rebuilds it: the `state` text, then deltas placed by offset."""
        text = ""
        for f in self.frames:
            if f["type"] == "state" and f["generating"] and f["generating"]["message_id"] == message_id:
                text = f["generating"]["text"]
                assert f["generating"]["offset"] == len(text)
            elif f["type"] == "delta" and f["message_id"] == message_id:
                assert f["offset"] <= len(text), f"gap at {f['offset']} (have {len(text)})"
                overlap = text[f["offset"] : f["offset"] + len(f["text"])]
                assert f["text"].startswith(overlap), "a repeated delta disagrees with the text"
                text = text[: f["offset"]] + f["text"] if f["offset"] + len(f["text"]) > len(text) else text
        return text

    async def close(self) -> None:
        await self.c.disconnect()


async def open_socket(user, conversation_id, *, origin: str = "http://localhost", cookie: str | None = None):
    """Connect as `user` (None: anonymous); returns (connected, Socket)."""
    from chatsite.asgi import application

    headers = [(b"origin", origin.encode()), (b"host", b"localhost")]
    if user is not None:
        cookie = cookie or await sync_to_async(session_cookie)(user)
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    communicator = WebsocketCommunicator(application, f"/ws/conversations/{conversation_id}/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    return connected, Socket(communicator)


@pytest.fixture
def live_server_factory(transactional_db, tmp_path):
    """Start real daphne processes on the test database: `live_server_factory(**env)` (`app=` another ASGI
    application than the site's, `server="uvicorn"` uvicorn instead); all stopped after."""
    from tests.live import LiveServer

    servers: list[LiveServer] = []

    def start(app: str = "chatsite.asgi:application", server: str = "daphne", **env: str) -> LiveServer:
        live = LiveServer(tmp_path, name=f"{server}{len(servers)}", app=app, server=server, **env).start()
        servers.append(live)
        return live

    yield start
    for live in servers:
        live.stop()
