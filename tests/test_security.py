"""Hardening: CSRF on every form and htmx request, a CSP without inline script, production settings
that pass `check --deploy`, the websocket's Origin, and errors that show neither traceback nor secret.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.urls import URLPattern, reverse

from conversations import urls as chat_urls
from conversations.models import Conversation, Message
from tests.conftest import open_socket
from tests.factories import add_message, make_conversation
from tests.fakes.provider import Reply

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "k3y-" + "abcdefghij0123456789" * 3,
    "ALLOWED_HOSTS": "chat.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
    "DATABASE_URL": "sqlite:////tmp/chat-deploy-check.sqlite3",
}


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Users are made per test: the production hasher's million rounds would dominate the run."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def run_django(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A management command or snippet in a fresh process with these settings in the environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_", "DEBUG", "SECRET_KEY"))}
    clean.pop("ALLOWED_HOSTS", None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "chatsite.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- production settings ------------------------------------------------------------------------------
def test_check_deploy_is_clean_with_production_settings():
    result = run_django("manage.py", "check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_turns_on_secure_cookies_hsts_and_https():
    snippet = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "print(json.dumps({k: getattr(s, k) for k in ['SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', "
        "'SECURE_SSL_REDIRECT', 'SECURE_HSTS_SECONDS', 'SECURE_HSTS_INCLUDE_SUBDOMAINS', "
        "'SESSION_COOKIE_HTTPONLY', 'SECURE_PROXY_SSL_HEADER', 'DEBUG', 'X_FRAME_OPTIONS', "
        "'SECURE_CONTENT_TYPE_NOSNIFF']}))"
    )
    result = run_django("-c", snippet, **PRODUCTION)
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout.strip().splitlines()[-1])
    assert values == {
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SESSION_COOKIE_HTTPONLY": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "DEBUG": False,
        "X_FRAME_OPTIONS": "DENY",
        "SECURE_CONTENT_TYPE_NOSNIFF": True,
    }


@pytest.mark.parametrize(
    "env",
    [
        {"DEBUG": "false", "ALLOWED_HOSTS": "chat.example.com"},  # no key
        {"DEBUG": "false", "ALLOWED_HOSTS": "chat.example.com", "SECRET_KEY": "short"},
        {"DEBUG": "false", "ALLOWED_HOSTS": "chat.example.com", "SECRET_KEY": "a" * 60},  # one distinct character
        {"DEBUG": "false", "SECRET_KEY": PRODUCTION["SECRET_KEY"]},  # no hosts
    ],
    ids=["no-key", "short-key", "weak-key", "no-hosts"],
)
def test_production_refuses_to_start_without_a_real_key_and_hosts(env):
    result = run_django("manage.py", "check", **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr


def test_the_healthcheck_is_reachable_over_plain_http_in_production():
    """Load balancers probe over HTTP: the HTTPS redirect exempts /healthz, and only it."""
    snippet = (
        "import django; django.setup(); from django.test import Client; c = Client(); "
        "print(c.get('/healthz', HTTP_HOST='chat.example.com').status_code, "
        "c.get('/', HTTP_HOST='chat.example.com').status_code)"
    )
    result = run_django("-c", snippet, **PRODUCTION)
    assert result.stdout.split()[-2:] == ["200", "301"], result.stdout + result.stderr


# -- CSRF ---------------------------------------------------------------------------------------------
def test_every_chat_post_needs_the_csrf_token(alice):
    conv = make_conversation(alice)
    reply = add_message(conv, role="assistant", content="x")
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    client.force_login(alice)
    posted = []
    for route in chat_urls.urlpatterns:
        assert isinstance(route, URLPattern)
        kwargs = {k: {"conversation_id": conv.pk, "message_id": reply.pk}[k] for k in route.pattern.converters}
        url = reverse(route.name, kwargs=kwargs)
        response = client.post(url, {"title": "x", "pinned": "1"})
        if response.status_code == 405:
            continue  # no POST at all
        assert response.status_code == 403, (url, response.status_code)
        posted.append(route.name)
    assert {"conversation_new", "conversation_rename", "conversation_pin", "conversation_delete"} <= set(posted)
    assert Conversation.objects.filter(pk=conv.pk).exists()


def test_htmx_requests_carry_the_token_and_are_accepted_with_it(alice):
    conv = make_conversation(alice, title="before")
    add_message(conv, role="user", content="hello")
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    page = client.get(conv.get_absolute_url()).content.decode()
    headers = re.search(r"hx-headers='([^']*)'", page)
    assert headers, "the page must give htmx the CSRF header"
    token = json.loads(headers.group(1))["X-CSRFToken"]
    url = reverse("conversation_rename", args=[conv.pk])
    assert client.post(url, {"title": "after"}, HTTP_HX_REQUEST="true").status_code == 403
    response = client.post(url, {"title": "after"}, HTTP_HX_REQUEST="true", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200
    conv.refresh_from_db()
    assert conv.title == "after"


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"method": (attrs.get("method") or "get").lower(), "id": attrs.get("id"), "token": False})
        elif tag == "input" and attrs.get("name") == "csrfmiddlewaretoken" and self.forms:
            self.forms[-1]["token"] = True


def pages(user):
    conv = make_conversation(user, title="t")
    add_message(conv, role="user", content="hello")
    return [
        "/",
        conv.get_absolute_url(),
        "/conversations/new/",
        reverse("conversation_rename", args=[conv.pk]),
        reverse("conversation_delete", args=[conv.pk]),
    ]


def test_every_post_form_on_the_pages_has_a_csrf_token(alice):
    client = Client()
    client.force_login(alice)
    seen = 0
    for url in pages(alice):
        response = client.get(url, follow=True)
        assert response.status_code == 200, url
        parser = _Forms()
        parser.feed(response.content.decode())
        for form in parser.forms:
            if form["method"] == "post" and form["id"] != "composer":
                seen += 1
                assert form["token"], (url, form)
    # The composer's text goes over the websocket; without script its form posts to the page,
    # which changes nothing on a POST.
    conv = Conversation.objects.filter(owner=alice).first()
    assert Client().post(conv.get_absolute_url(), {"content": "x"}).status_code in (302, 403, 405)
    assert client.post(conv.get_absolute_url(), {"content": "x"}).status_code in (403, 405)
    assert not Message.objects.filter(conversation=conv, content="x").exists()
    logged_out = Client().get("/accounts/login/").content.decode()
    parser = _Forms()
    parser.feed(logged_out)
    assert [f["token"] for f in parser.forms if f["method"] == "post"] == [True]
    assert seen >= 3


# -- CSP and headers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/accounts/login/", "/accounts/signup/"])
def test_public_pages_send_the_csp(url):
    check_headers(Client().get(url))


def check_headers(response) -> None:
    csp = response["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["script-src"] == ["'self'"], csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert directives["object-src"] == ["'none'"] and directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'self'"]
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    html = response.content.decode()
    inline = re.findall(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", html)
    assert not inline, inline
    assert not re.search(r"<[^>]+\son[a-z]+\s*=", html), "an inline handler would be blocked by the CSP"
    assert not re.search(r"<[^>]+\sstyle\s*=", html), "an inline style would be blocked by the CSP"


def test_the_chat_pages_and_the_admin_keep_to_the_csp(alice, charlie):
    client = Client()
    client.force_login(alice)
    for url in pages(alice):
        check_headers(client.get(url, follow=True))
    staff = Client()
    staff.force_login(charlie)
    for url in ["/admin/", "/admin/conversations/persona/", "/admin/conversations/persona/add/"]:
        response = staff.get(url)
        assert response.status_code == 200
        assert "'unsafe-inline'" not in response["Content-Security-Policy"]


def test_the_session_cookie_is_http_only(alice):
    client = Client()
    response = client.post("/accounts/login/", {"login": "alice", "password": "pw-" + "alice" * 3})
    assert response.status_code == 302
    assert response.cookies["sessionid"]["httponly"]
    assert response.cookies["sessionid"]["samesite"] == "Lax"


# -- errors --------------------------------------------------------------------------------------------
def test_a_server_error_shows_no_traceback_and_no_secret(alice, monkeypatch, settings):
    from conversations import selectors

    assert settings.DEBUG is False

    def explode(*args, **kwargs):
        raise RuntimeError(f"database password is hunter2; key {settings.SECRET_KEY}")

    monkeypatch.setattr(selectors, "conversations_for_user", explode)
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    response = client.get("/")
    assert response.status_code == 500
    body = response.content.decode()
    assert "hunter2" not in body and settings.SECRET_KEY not in body
    assert "Traceback" not in body and "RuntimeError" not in body


@pytest.mark.django_db(transaction=True)
async def test_a_crash_inside_a_reply_reaches_the_user_without_its_details(alice, monkeypatch):
    from conversations.generation import reply as generation

    async def explode(spec):
        raise RuntimeError("connection string postgres://chat:hunter2@db/chat")

    monkeypatch.setattr(generation, "provider_for", explode)
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("hi")
    end = await ws.until("end")
    error = await ws.until("error")
    assert end["status"] == "error"
    assert error["code"] == "provider_unavailable"
    assert all("hunter2" not in json.dumps(f) for f in ws.frames)
    await ws.close()


@pytest.mark.django_db(transaction=True)
async def test_a_provider_error_body_never_reaches_the_user(alice, fake_provider):
    fake_provider.script(Reply(status=400, error_message="Your key sk-live-TOPSECRET is over its budget"))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("hi")
    error = await ws.until("error")
    assert error["code"] == "provider_unavailable"
    assert all("TOPSECRET" not in json.dumps(f) for f in ws.frames)
    assert "TOPSECRET" not in (await sync_to_async(page_of)(alice, conv))
    await ws.close()


def page_of(user, conversation) -> str:
    client = Client()
    client.force_login(user)
    return client.get(conversation.get_absolute_url()).content.decode()


# -- the websocket's Origin -----------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        ("http://localhost", True),
        ("http://evil.example", False),
        ("http://localhost.evil.example", False),
        ("null", False),
        ("", False),  # no Origin header at all
    ],
)
async def test_the_websocket_checks_the_origin(alice, origin, accepted):
    from channels.testing import WebsocketCommunicator

    from chatsite.asgi import application
    from tests.conftest import session_cookie

    conv = await sync_to_async(make_conversation)(alice)
    cookie = await sync_to_async(session_cookie)(alice)
    headers = [(b"host", b"localhost"), (b"cookie", f"sessionid={cookie}".encode())]
    if origin:
        headers.append((b"origin", origin.encode()))
    communicator = WebsocketCommunicator(application, f"/ws/conversations/{conv.pk}/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected is accepted
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_the_websocket_refuses_a_forged_session(alice):
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(None, conv.pk, cookie="forged-session-key")
    assert not ok
    await ws.close()
