"""The websocket's Origin must be exactly the page's own origin (scheme, host and port) or one of
CSRF_TRUSTED_ORIGINS, as Django's CSRF check asks of a form."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from tests.conftest import session_cookie
from tests.factories import make_conversation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


async def connects(user, conv, *, origin, host="localhost", scheme="ws", extra=()):
    from chatsite.asgi import application

    cookie = await sync_to_async(session_cookie)(user)
    headers = [(b"host", host.encode()), (b"cookie", f"sessionid={cookie}".encode()), *extra]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    communicator = WebsocketCommunicator(application, f"/ws/conversations/{conv.pk}/", headers=headers)
    communicator.scope["scheme"] = scheme
    connected, _ = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return connected


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        ("http://localhost", "localhost", "ws", True),
        ("http://localhost:8000", "localhost:8000", "ws", True),
        ("https://localhost", "localhost", "wss", True),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "ws", True),
        # Same host name, another port: another site (before: allowed, ALLOWED_HOSTS has the name).
        ("http://127.0.0.1:9999", "127.0.0.1:8000", "ws", False),
        ("http://localhost:9999", "localhost", "ws", False),
        # Another scheme.
        ("https://localhost", "localhost", "ws", False),
        ("http://localhost", "localhost", "wss", False),
        # Another host, or none.
        ("http://evil.example", "localhost", "ws", False),
        ("http://localhost.evil.example", "localhost", "ws", False),
        ("null", "localhost", "ws", False),
        (None, "localhost", "ws", False),
        # A Host that is not allowed cannot vouch for itself.
        ("http://evil.example", "evil.example", "ws", False),
    ],
)
async def test_it_allows_only_the_pages_own_origin(alice, origin, host, scheme, allowed):
    conv = await sync_to_async(make_conversation)(alice)
    assert await connects(alice, conv, origin=origin, host=host, scheme=scheme) is allowed


async def test_it_allows_csrf_trusted_origins_with_their_wildcards(alice, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com", "https://*.example.org"]
    conv = await sync_to_async(make_conversation)(alice)
    # Behind a proxy: the socket reaches daphne as ws://internal, the page is on the public origin.
    assert await connects(alice, conv, origin="https://chat.example.com", host="localhost:8000")
    assert await connects(alice, conv, origin="https://eu.example.org", host="localhost:8000")
    assert not await connects(alice, conv, origin="http://chat.example.com", host="localhost:8000")
    assert not await connects(alice, conv, origin="https://example.org.evil.example", host="localhost:8000")
    assert not await connects(alice, conv, origin="https://chat.example.com:8443", host="localhost:8000")


async def test_it_honours_the_proxys_https_header(alice, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    conv = await sync_to_async(make_conversation)(alice)
    forwarded = ((b"x-forwarded-proto", b"https"),)
    assert await connects(alice, conv, origin="https://localhost", host="localhost", extra=forwarded)
    assert not await connects(alice, conv, origin="http://localhost", host="localhost", extra=forwarded)
