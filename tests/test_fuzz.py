"""Property tests: hostile frames at the consumer, hostile markdown/HTML at the renderer and the page.

No frame crashes the socket or stores what it should not; no rendered message can run script.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from html.parser import HTMLParser

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from conversations.models import Message
from conversations.rendering import ALLOWED_TAGS, render_markdown
from tests.conftest import open_socket
from tests.factories import add_message, make_conversation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Users are made per test: the production hasher's million rounds would dominate the run."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


FUZZ = hsettings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MAX_CHARS = 120
ERROR_CODES = {
    "invalid",
    "busy",
    "not_found",
    "rate_limited",
    "quota_exceeded",
    "provider_auth",
    "provider_rate_limited",
    "provider_unavailable",
    "context_too_long",
}  # not `unavailable`: a frame that fails on the server for an unexpected reason is a bug here
# The contract's frames and the protocol's additions (docs/protocol.md): `retrying`, `stopping`, `path`.
SERVER_FRAMES = {"state", "message", "start", "delta", "end", "error", "retrying", "stopping", "path"}

# -- strategies -------------------------------------------------------------------------------------
HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg/onload=alert(1)>",
    "<iframe src=javascript:alert(1)>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[x](jav&#x09;ascript:alert(1))",
    "![x](javascript:alert(1))",
    "![x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[x](vbscript:msgbox(1))",
    '<a href="javascript:alert(1)">x</a>',
    "<style>body{display:none}</style>",
    "<math><mi xlink:href=javascript:alert(1)>x</mi></math>",
    "```html\n<script>alert(1)</script>\n```",
    '```"><script>alert(1)</script>\nx\n```',
    "`<script>`",
    "<!-- <script>alert(1)</script> -->",
    "<div onclick=alert(1)>",
    '| a | b |\n|---|---|\n| <script>x</script> | <b onmouseover="x">y</b> |',
    "<form action=//evil><input name=x></form>",
    "<object data=x></object><embed src=x>",
    "<base href=//evil/>",
    "<meta http-equiv=refresh content=0;url=//evil>",
    "&lt;script&gt;",
    "\x00",
    "\u202e",
    "<<script>script>alert(1)<</script>/script>",
    "* [a](http://ok.example) *",
    "> quote <b>bold</b>",
    "\n\n",
    "<",
    ">",
    '"',
    "'",
    "&",
]
text_pieces = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=30))
hostile_text = st.lists(text_pieces, max_size=8).map("".join)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
frame_types = st.one_of(
    st.sampled_from(["send", "stop", "regenerate", "resume", "switch"]),
    st.sampled_from(["", "SEND", "send ", "__init__", "dispatch", "chat.delta", "websocket.disconnect"]),
    json_values,
)
client_ids = st.one_of(st.uuids().map(str), st.sampled_from(["", "not-a-uuid", "{" + "0" * 32 + "}"]), json_values)
contents = st.one_of(hostile_text, st.text(min_size=MAX_CHARS - 2, max_size=MAX_CHARS + 5), json_values)
ids = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), json_values)
structured = st.fixed_dictionaries(
    {"type": frame_types},
    optional={
        "client_id": client_ids,
        "content": contents,
        "message_id": ids,
        "offset": ids,
        "edit_of": ids,
        "extra": json_values,
    },
)


def encoded(value) -> str:
    return json.dumps(value)


raw_frames = st.one_of(
    structured.map(encoded),
    json_values.map(encoded),
    st.text(max_size=50),  # mostly not JSON at all
    st.sampled_from(['{"type": "send"', "[" * 2000 + "]" * 2000, '{"type": "\\ud800"}', "NaN", "1e999", "{}"]),
)


# -- the consumer -----------------------------------------------------------------------------------
async def _throw(user, frames_to_send: list[str]) -> None:
    conv = await sync_to_async(make_conversation)(user)
    ok, ws = await open_socket(user, conv.pk)
    assert ok
    assert (await ws.recv())["type"] == "state"
    accepted: dict[str, str] = {}
    for raw in frames_to_send:
        # Straight into the app, so an empty text frame can be sent too.
        await ws.c.send_input({"type": "websocket.receive", "text": raw})
        try:
            frame = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if (
            isinstance(frame, dict)
            and frame.get("type") == "send"
            and isinstance(frame.get("content"), str)
            and frame["content"].strip()
            and len(frame["content"]) <= MAX_CHARS
            and "\x00" not in frame["content"]
        ):
            with contextlib.suppress(ValueError):
                accepted.setdefault(str(uuid.UUID(str(frame.get("client_id")))), frame["content"])
    # Still alive and answering: a known-bad frame gets its `invalid`.
    await ws.c.send_to(text_data='{"type": "fuzz-probe"}')
    while True:
        frame = await ws.recv(timeout=3)
        assert frame["type"] in SERVER_FRAMES, frame
        if frame["type"] == "error":
            assert frame["code"] in ERROR_CODES, frame
            assert isinstance(frame["message"], str) and frame["message"]
            assert "Traceback" not in frame["message"]
            if frame["message"] == "Unknown frame type.":
                break
    # Let any reply it started finish before looking at the rows.
    for _ in range(200):
        if not await sync_to_async(Message.objects.filter(conversation=conv, status="streaming").exists)():
            break
        await asyncio.sleep(0.02)
    await ws.close()

    users = await sync_to_async(
        lambda: list(Message.objects.filter(conversation=conv, role="user").values_list("client_id", "content"))
    )()
    for client_id, content in users:
        # Only sends the protocol accepts are stored, exactly as typed.
        assert str(client_id) in accepted, (client_id, content)
        assert accepted[str(client_id)] == content
        assert content.strip() and "\x00" not in content and len(content) <= MAX_CHARS
    assert len({c for c, _ in users}) == len(users)  # one row per client_id, resends or not


@FUZZ
@given(frames=st.lists(raw_frames, min_size=1, max_size=12))
def test_it_survives_hostile_frames_and_stores_only_valid_sends(alice, settings, frames):
    settings.CHAT_MAX_MESSAGE_CHARS = MAX_CHARS
    settings.CHAT_MAX_FRAME_BYTES = 8000
    asyncio.run(_throw(alice, frames))


@FUZZ
@given(frames=st.lists(st.binary(max_size=64), min_size=1, max_size=5))
def test_it_survives_binary_frames(alice, frames):
    async def throw():
        conv = await sync_to_async(make_conversation)(alice)
        ok, ws = await open_socket(alice, conv.pk)
        await ws.recv()
        for raw in frames:
            await ws.c.send_input({"type": "websocket.receive", "bytes": raw})
        await ws.c.send_to(text_data='{"type": "fuzz-probe"}')
        while (await ws.recv(timeout=3)).get("message") != "Unknown frame type.":
            pass
        await ws.close()
        assert not await sync_to_async(Message.objects.filter(conversation=conv, role="user").exists)()

    asyncio.run(throw())


# Fixed client ids: test ids must be the same in every process that collects them (pytest-xdist).
EDGE_FRAMES = [
    {"type": ["send"]},
    {"type": {"a": 1}},
    {"type": None},
    {"type": "resume", "message_id": 2**64, "offset": 0},
    {"type": "resume", "message_id": 1, "offset": 2**64},
    {"type": "resume", "message_id": True, "offset": False},
    {"type": "resume", "message_id": 0, "offset": 0},
    {"type": "resume", "message_id": 1.0, "offset": 0},
    {"type": "resume", "message_id": {}, "offset": 0},  # unhashable: once a TypeError that closed the socket
    {"type": "resume", "message_id": [1], "offset": 0},
    {"type": "switch", "message_id": {}},
    {"type": "send", "client_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "edge-1")), "content": "x", "edit_of": 2**64},
    {"type": "send", "client_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "edge-2")), "content": "x", "edit_of": True},
    {"type": "send", "client_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "edge-3")), "content": "x", "edit_of": -1},
    {"type": "send", "client_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "edge-4")), "content": "\ud83d"},
    {"type": "send", "client_id": "0" * 10_000, "content": "x"},
    {"type": "send", "client_id": [], "content": "x"},
]


@pytest.mark.parametrize("frame", EDGE_FRAMES, ids=lambda f: json.dumps(f)[:60])
async def test_edge_frames_get_an_error_and_store_nothing(alice, frame):
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.c.send_to(text_data=json.dumps(frame))
    answer = await ws.recv()
    assert answer["type"] == "error" and answer["code"] in {"invalid", "not_found"}, answer
    await ws.c.send_to(text_data='{"type": "fuzz-probe"}')
    assert (await ws.recv())["message"] == "Unknown frame type."  # the socket lives on
    assert not await sync_to_async(Message.objects.filter(conversation=conv).exists)()
    await ws.close()


# -- the renderer and the page ----------------------------------------------------------------------
URL_ATTRIBUTES = {"href", "src", "action", "formaction", "xlink:href", "data", "srcset", "background", "poster"}
DANGEROUS_TAGS = {
    "script", "style", "iframe", "frame", "frameset", "object", "embed", "form", "base", "meta", "link",
    "svg", "math", "template", "textarea", "select", "button", "img", "video", "audio", "source",
}  # fmt: skip
SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


def url_scheme(value: str) -> str:
    """The scheme a browser would see: C0/space trimmed at the ends, tabs and newlines removed inside."""
    value = re.sub(r"[\t\n\r]", "", value.strip("".join(map(chr, range(0x21)))))
    match = SCHEME.match(value)
    return match.group(1).lower() if match else ""


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    handle_startendtag = handle_starttag


def tags_of(html: str):
    parser = _Tags()
    parser.feed(html)
    parser.close()
    return parser.tags


def assert_inert(html: str) -> None:
    """Only the renderer's tags; no script-capable tag, handler, style or script URL."""
    for tag, attrs in tags_of(html):
        assert tag in ALLOWED_TAGS and tag not in DANGEROUS_TAGS, (tag, html)
        attributes = dict(attrs)
        for name, value in attrs:
            assert not name.startswith("on") and name not in {"style", "srcdoc", "formaction"}, (tag, name, html)
            if name in URL_ATTRIBUTES and value:
                assert url_scheme(value) in {"", "http", "https", "mailto"}, (tag, name, value)
        if tag == "input":  # a task-list box: a picture, never a control
            assert attributes.get("type") == "checkbox" and "disabled" in attributes, html


def test_the_scheme_check_reads_urls_as_a_browser_does():
    assert url_scheme(" java\tscript:alert(1)") == "javascript"
    assert url_scheme("\x01JavaScript:x") == "javascript"
    assert url_scheme("jav%09ascript:alert(1)") == ""  # a relative path, harmless
    assert url_scheme("/a:b") == ""


@hsettings(max_examples=300, deadline=None)
@given(text=hostile_text)
def test_rendered_markdown_never_carries_script(text):
    html = str(render_markdown(text))
    assert_inert(html)
    assert "<script" not in html.lower()


@pytest.mark.parametrize("text", HOSTILE)
def test_each_known_attack_renders_inert(text):
    assert_inert(str(render_markdown(text)))


class _Scripts(HTMLParser):
    """Every executable thing on a page: script elements, handler attributes, script URLs.

    `<script type="application/json">` (Django's json_script) is data, never run.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[dict[str, str | None]] = []
        self.handlers: list[tuple[str, str]] = []
        self.inline_script = False
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        if tag == "script" and dict(attrs).get("type") != "application/json":
            self.scripts.append(dict(attrs))
            self._in_script = True
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append((tag, name))
            if name in URL_ATTRIBUTES and value and url_scheme(value) in {"javascript", "vbscript"}:
                self.handlers.append((tag, name))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_script = True


@FUZZ
@given(user_text=hostile_text, reply_text=hostile_text)
def test_the_conversation_page_runs_nothing_from_a_message(alice, user_text, reply_text):
    conv = make_conversation(alice)
    user_text = user_text.replace("\x00", "") or "x"
    reply_text = reply_text.replace("\x00", "")
    add_message(conv, role="user", content=user_text)
    add_message(conv, role="assistant", content=reply_text)
    client = Client()
    client.force_login(alice)
    response = client.get(conv.get_absolute_url())
    assert response.status_code == 200
    page = _Scripts()
    page.feed(response.content.decode())
    assert not page.handlers
    assert not page.inline_script
    assert all((s.get("src") or "").startswith("/static/") for s in page.scripts), page.scripts


@FUZZ
@given(persona=st.one_of(st.text(max_size=40), st.sampled_from(["../", "%00", "' OR 1=1 --", "a" * 500])))
def test_new_conversation_never_errors_on_any_persona_value(alice, persona):
    client = Client()
    client.force_login(alice)
    response = client.post("/conversations/new/", {"persona": persona.replace("\x00", "")})
    assert response.status_code in (302, 404)


@FUZZ
@given(path=st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=50))
def test_no_conversation_url_answers_500(alice, path):
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    response = client.get("/conversations/" + path.replace("?", "").replace("#", ""))
    assert response.status_code in (200, 301, 302, 404, 405), response.status_code
