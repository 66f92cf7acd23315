"""Provider faults, through the real SDKs against the fake provider and the real websocket stack.

Before the first token a 429/5xx/overloaded/connection failure is retried (announced by
`retrying`); after it the partial text is kept with status `error`; auth and context errors map to
their codes; a provider that goes quiet is timed out. The user's message survives every one.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time

import httpx2
import pytest
from asgiref.sync import sync_to_async

from conversations.llm import ChatRequest, ProviderError
from conversations.llm.base import error_for_status, parse_retry_after, within_gap
from conversations.models import Message
from tests.conftest import open_socket
from tests.factories import make_conversation, make_turns
from tests.fakes.provider import Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Users are made per test: the production hasher's million rounds would dominate the run."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


SDKS = ["openai:gpt-test", "anthropic:claude-test"]
WORDS = "one two three four five six seven eight nine ten"


async def rows_of(conversation):
    return await sync_to_async(lambda: list(Message.objects.filter(conversation=conversation).order_by("id")))()


async def ask(user, content="please answer", *, conversation=None):
    """Open a socket on a (new) conversation, send one message; returns (conversation, socket, start)."""
    conversation = conversation or await sync_to_async(make_conversation)(user)
    ok, ws = await open_socket(user, conversation.pk)
    assert ok
    assert (await ws.recv())["type"] == "state"
    await ws.send_message(content)
    start = await ws.until("start")
    return conversation, ws, start


def frames(ws, type_):
    return [f for f in ws.frames if f["type"] == type_]


def text_of(content) -> str:
    """A request message's text: OpenAI's string, or Anthropic's text blocks (the last turn's carries
    the prompt cache's `cache_control` breakpoint, docs/architecture.md "Prompt caching")."""
    if isinstance(content, str):
        return content
    assert all(block["type"] == "text" for block in content), content
    return "".join(block["text"] for block in content)


# -- before the first token: retried ------------------------------------------------------------
@pytest.mark.parametrize("model", SDKS)
async def test_it_retries_a_429_honouring_retry_after_then_completes(alice, fake_provider, settings, model):
    settings.CHAT_DEFAULT_MODEL = model
    fake_provider.script(Reply(status=429, retry_after=0.15), Reply(text=WORDS))
    conv, ws, start = await ask(alice)
    retrying = await ws.until("retrying")
    assert retrying == {
        "type": "retrying",
        "message_id": start["message_id"],
        "attempt": 1,
        "retry_in": 0.15,  # the provider's Retry-After, not our own backoff
        "code": "provider_rate_limited",
    }
    began = time.monotonic()
    end = await ws.until("end")
    assert time.monotonic() - began >= 0.1  # it did wait before asking again
    assert (end["status"], end["content"]) == ("complete", WORDS)
    assert ws.text_of(start["message_id"]) == WORDS
    assert len(fake_provider.requests) == 2
    assert not frames(ws, "error")
    await ws.close()


async def test_it_backs_off_exponentially_with_jitter_on_5xx(alice, fake_provider, settings):
    settings.CHAT_RETRY_BASE_DELAY = 0.04
    settings.CHAT_RETRY_MAX_DELAY = 1.0
    fake_provider.script(Reply(status=500), Reply(status=502), Reply(status=503), Reply(text=WORDS))
    conv, ws, start = await ask(alice)
    end = await ws.until("end")
    assert end["status"] == "complete"
    delays = [f["retry_in"] for f in frames(ws, "retrying")]
    assert [f["attempt"] for f in frames(ws, "retrying")] == [1, 2, 3]
    assert {f["code"] for f in frames(ws, "retrying")} == {"provider_unavailable"}
    # Attempt n waits between half and all of base * 2**(n-1).
    for n, delay in enumerate(delays, start=1):
        ceiling = 0.04 * 2 ** (n - 1)
        assert ceiling / 2 - 0.01 <= delay <= ceiling + 0.01, (n, delay)
    await ws.close()


async def test_it_retries_an_overloaded_error_inside_a_200_anthropic_stream(alice, fake_provider, settings):
    settings.CHAT_DEFAULT_MODEL = "anthropic:claude-test"
    fake_provider.script(Reply(text=WORDS, stream_error_after=0, error_type="overloaded_error"), Reply(text=WORDS))
    conv, ws, start = await ask(alice)
    retrying = await ws.until("retrying")
    assert retrying["code"] == "provider_unavailable"
    end = await ws.until("end")
    assert (end["status"], end["content"]) == ("complete", WORDS)
    assert len(fake_provider.requests) == 2
    await ws.close()


async def test_it_retries_a_529_overloaded_from_anthropic(alice, fake_provider, settings):
    settings.CHAT_DEFAULT_MODEL = "anthropic:claude-test"
    fake_provider.script(Reply(status=529), Reply(text=WORDS))
    conv, ws, start = await ask(alice)
    end = await ws.until("end")
    assert (end["status"], end["content"]) == ("complete", WORDS)
    assert [f["code"] for f in frames(ws, "retrying")] == ["provider_unavailable"]
    await ws.close()


@pytest.mark.parametrize("model", SDKS)
async def test_it_gives_up_after_the_bounded_retries_and_keeps_the_message(alice, fake_provider, settings, model):
    settings.CHAT_DEFAULT_MODEL = model
    settings.CHAT_PROVIDER_RETRIES = 2
    fake_provider.script(*[Reply(status=503)] * 5)
    conv, ws, start = await ask(alice, "keep me")
    end = await ws.until("end")
    error = await ws.until("error")
    assert (end["status"], end["content"]) == ("error", "")
    assert error["code"] == "provider_unavailable" and error["message_id"] == start["message_id"]
    assert len(frames(ws, "retrying")) == 2
    assert len(fake_provider.requests) == 3  # the first try and two retries, no more
    rows = await rows_of(conv)
    assert [(m.role, m.content, m.status) for m in rows] == [
        ("user", "keep me", "complete"),
        ("assistant", "", "error"),
    ]
    assert rows[1].error_code == "provider_unavailable"
    await ws.close()


async def test_a_retry_after_longer_than_we_wait_is_reported_at_once(alice, fake_provider, settings):
    settings.CHAT_RETRY_MAX_DELAY = 5
    fake_provider.script(Reply(status=429, retry_after=120), Reply(text=WORDS))
    conv, ws, start = await ask(alice)
    end = await ws.until("end", timeout=3)
    error = await ws.until("error")
    assert end["status"] == "error"
    assert (error["code"], error["retry_after"]) == ("provider_rate_limited", 120)
    assert len(fake_provider.requests) == 1
    await ws.close()


async def test_an_unreachable_provider_is_retried_then_reported(alice, fake_provider, settings):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings.OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"
    settings.CHAT_PROVIDER_RETRIES = 1
    conv, ws, start = await ask(alice, "anyone?")
    end = await ws.until("end")
    error = await ws.until("error")
    assert end["status"] == "error"
    assert error["code"] == "provider_unavailable"
    assert [f["attempt"] for f in frames(ws, "retrying")] == [1]
    assert [m.content for m in await rows_of(conv)][0] == "anyone?"
    await ws.close()


# -- refused: not retried --------------------------------------------------------------------------
@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("model", SDKS)
async def test_an_auth_failure_is_provider_auth_and_keeps_the_message(alice, fake_provider, settings, model, status):
    settings.CHAT_DEFAULT_MODEL = model
    secret = "Incorrect API key provided: sk-proj-SECRET123. You can find your API key at ..."
    fake_provider.script(Reply(status=status, error_message=secret))
    conv, ws, start = await ask(alice, "hello?")
    end = await ws.until("end")
    error = await ws.until("error")
    assert end["status"] == "error"
    assert error["code"] == "provider_auth"
    assert len(fake_provider.requests) == 1  # a bad key is not retried
    assert not frames(ws, "retrying")
    assert all("SECRET123" not in str(f) for f in ws.frames)  # the provider's text never reaches the user
    rows = await rows_of(conv)
    assert (rows[0].role, rows[0].content) == ("user", "hello?")
    assert (rows[1].status, rows[1].error_code) == ("error", "provider_auth")
    await ws.close()


@pytest.mark.parametrize("model", SDKS)
async def test_context_too_long_trims_the_history_once_and_retries(alice, fake_provider, settings, model):
    settings.CHAT_DEFAULT_MODEL = model
    conv = await sync_to_async(make_conversation)(alice)
    await sync_to_async(make_turns)(conv, 8)
    fake_provider.script(Reply(status=400, error_type="context_length_exceeded"), Reply(text=WORDS))
    conv, ws, start = await ask(alice, "the question", conversation=conv)
    end = await ws.until("end")
    assert (end["status"], end["content"]) == ("complete", WORDS)
    first, second = (r.json["messages"] for r in fake_provider.requests)
    assert len(second) < len(first)
    assert text_of(first[-1]["content"]) == text_of(second[-1]["content"]) == "the question"
    assert second[0]["role"] == ("system" if model.startswith("openai") else "user")
    await ws.close()


@pytest.mark.parametrize("model", SDKS)
async def test_context_too_long_with_nothing_to_trim_is_context_too_long(alice, fake_provider, settings, model):
    settings.CHAT_DEFAULT_MODEL = model
    fake_provider.script(*[Reply(status=400, error_type="context_length_exceeded")] * 3)
    conv, ws, start = await ask(alice, "a very long question")
    end = await ws.until("end")
    error = await ws.until("error")
    assert end["status"] == "error"
    assert error["code"] == "context_too_long"
    assert len(fake_provider.requests) == 1
    await ws.close()


# -- after tokens: the partial text is kept --------------------------------------------------------
# `drop_after`: the connection breaks mid-body. `end_after`: the body ends cleanly but without its
# final events (OpenAI's finish_reason/[DONE], Anthropic's message_stop), as a cutting proxy does;
# that is a partial reply too, never a `complete` one.
@pytest.mark.parametrize("cut", ["drop_after", "end_after"])
@pytest.mark.parametrize("model", SDKS)
async def test_a_drop_after_some_tokens_keeps_the_partial_text_with_status_error(
    alice, fake_provider, settings, model, cut
):
    settings.CHAT_DEFAULT_MODEL = model
    fake_provider.script(Reply(text=WORDS, **{cut: 4}))
    conv, ws, start = await ask(alice)
    end = await ws.until("end")
    error = await ws.until("error")
    partial = "one two three four"
    assert (end["status"], end["content"]) == ("error", partial)
    assert ws.text_of(start["message_id"]) == partial
    assert error["code"] == "provider_unavailable"
    assert len(fake_provider.requests) == 1  # never retried once text has streamed: it would repeat
    reply = (await rows_of(conv))[-1]
    assert (reply.status, reply.content) == ("error", partial)

    # Regenerate makes a whole reply, a new version beside the failed one.
    fake_provider.script(Reply(text="a whole reply"))
    await ws.send({"type": "regenerate"})
    again = await ws.until("start")
    assert again["siblings"] == [start["message_id"], again["message_id"]]
    end = await ws.until("end")
    assert (end["status"], end["content"]) == ("complete", "a whole reply")
    await ws.close()


@pytest.mark.parametrize("model", SDKS)
async def test_an_error_event_after_some_tokens_keeps_the_partial_text(alice, fake_provider, settings, model):
    settings.CHAT_DEFAULT_MODEL = model
    fake_provider.script(Reply(text=WORDS, stream_error_after=3, error_type="overloaded_error"))
    conv, ws, start = await ask(alice)
    end = await ws.until("end")
    assert (end["status"], end["content"]) == ("error", "one two three")
    assert (await ws.until("error"))["code"] == "provider_unavailable"
    assert len(fake_provider.requests) == 1
    await ws.close()


@pytest.mark.parametrize("model", SDKS)
async def test_a_provider_that_stops_sending_is_timed_out(alice, fake_provider, settings, model):
    settings.CHAT_DEFAULT_MODEL = model
    settings.CHAT_READ_TIMEOUT = 0.5
    fake_provider.script(Reply(text=WORDS, hang_after=5))
    conv, ws, start = await ask(alice)
    await ws.until("delta")
    began = time.monotonic()
    end = await ws.until("end", timeout=10)
    assert time.monotonic() - began < 5
    assert (end["status"], end["content"]) == ("error", "one two three four five")
    assert (await ws.until("error"))["code"] == "provider_unavailable"
    reply = (await rows_of(conv))[-1]
    assert (reply.status, reply.content) == ("error", "one two three four five")
    await ws.close()


async def test_a_provider_silent_from_the_start_is_timed_out_and_retried_a_bounded_number_of_times(
    alice, fake_provider, settings
):
    settings.CHAT_READ_TIMEOUT = 0.4
    settings.CHAT_PROVIDER_RETRIES = 1
    fake_provider.script(Reply(text=WORDS, hang_after=0), Reply(text=WORDS, hang_after=0))
    conv, ws, start = await ask(alice, "still there?")
    end = await ws.until("end", timeout=10)
    assert (end["status"], end["content"]) == ("error", "")
    assert len(fake_provider.requests) == 2
    assert [m.content for m in await rows_of(conv)] == ["still there?", ""]
    await ws.close()


@pytest.mark.parametrize("provider_class", ["openai", "anthropic"])
async def test_the_sdk_clients_themselves_time_out_a_silent_stream(fake_provider, settings, provider_class):
    """The SDKs' read timeouts work on their own (a wrong timeout type once broke every Anthropic call)."""
    from conversations.llm.anthropic import AnthropicProvider
    from conversations.llm.openai import OpenAIProvider

    settings.CHAT_READ_TIMEOUT = 0.4
    provider = OpenAIProvider() if provider_class == "openai" else AnthropicProvider()
    fake_provider.script(Reply(text=WORDS, hang_after=2))
    got = []
    began = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(
            ChatRequest(model="m", system="", messages=[{"role": "user", "content": "x"}])
        ):
            got.append(item)
    assert time.monotonic() - began < 5
    assert caught.value.code == "provider_unavailable" and caught.value.retryable
    assert "".join(got) == "one two"
    await provider.aclose()


@pytest.mark.parametrize("provider_class", ["openai", "anthropic"])
async def test_a_cancelled_stream_stays_cancelled(fake_provider, settings, provider_class):
    """Cancelling an adapter's reader (a stop) is not mistaken for its read guard's timeout."""
    from conversations.llm.anthropic import AnthropicProvider
    from conversations.llm.openai import OpenAIProvider
    from tests.adapters import collect

    settings.CHAT_READ_TIMEOUT = 0.3
    provider = OpenAIProvider() if provider_class == "openai" else AnthropicProvider()
    fake_provider.script(Reply(text="a b c", hang_after=1))
    chat = ChatRequest(model="m", system="", messages=[{"role": "user", "content": "x"}])
    task = asyncio.ensure_future(collect(provider, chat))
    await asyncio.sleep(0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("provider_class", ["openai", "anthropic"])
async def test_the_sdk_clients_get_both_timeouts_as_numbers(settings, provider_class):
    """Connecting is bounded too (an `httpx.Timeout` given to these httpx2-based SDKs lost it)."""
    from conversations.llm.anthropic import AnthropicProvider
    from conversations.llm.openai import OpenAIProvider

    settings.CHAT_CONNECT_TIMEOUT = 3.5
    settings.CHAT_READ_TIMEOUT = 42.0
    provider = OpenAIProvider() if provider_class == "openai" else AnthropicProvider()
    timeout = provider.client.timeout
    assert isinstance(timeout, httpx2.Timeout)  # the SDK's transport's own type, not httpx's
    assert (timeout.connect, timeout.read) == (3.5, 42.0)
    await provider.aclose()


async def test_a_changed_timeout_setting_reaches_a_new_client(settings):
    from conversations.llm import provider_for

    settings.OPENAI_API_KEY = "k"
    settings.CHAT_READ_TIMEOUT = 5.0
    first, _ = await provider_for("openai:m")
    settings.CHAT_READ_TIMEOUT = 6.0
    second, _ = await provider_for("openai:m")
    assert first is not second and second.client.timeout.read == 6.0
    assert (await provider_for("openai:m"))[0] is second  # and is cached again
    await first.aclose()
    await second.aclose()


async def test_keepalives_without_text_are_timed_out():
    """A stream kept open by pings yields nothing: the gap guard ends it."""

    async def pinging():
        yield "first"
        await asyncio.sleep(0.05)
        yield "second"
        while True:  # the SDK swallows keep-alives: from outside, only time passes
            await asyncio.sleep(0.01)

    got = []
    began = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        async for item in within_gap(pinging(), 0.3):
            got.append(item)
            await asyncio.sleep(0.5)  # a slow caller between items is not the provider's silence
    assert got == ["first", "second"]
    assert caught.value.code == "provider_unavailable"
    assert 1.0 <= time.monotonic() - began < 3


async def test_the_gap_guard_lets_a_stop_through_as_a_cancellation():
    async def slow():
        yield "a"
        await asyncio.sleep(30)
        yield "b"

    async def read():
        return [item async for item in within_gap(slow(), 10)]

    task = asyncio.ensure_future(read())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_stop_holds_even_when_the_cancellation_is_swallowed(alice, fake_provider, monkeypatch):
    """redis-py can swallow a cancellation that lands inside a command: `stop` must not depend on it."""
    from conversations.generation import Generation

    original = Generation.send

    async def swallowing_send(self, event):
        try:
            await original(self, event)
            await asyncio.sleep(0.002)  # most cancellations land here, and vanish
        except asyncio.CancelledError:
            pass

    monkeypatch.setattr(Generation, "send", swallowing_send)
    fake_provider.script(Reply(text="word " * 1000, token_delay=0.001))
    conv, ws, start = await ask(alice)
    for _ in range(5):
        await ws.until("delta")
    await ws.send({"type": "stop"})
    end = await ws.until("end", timeout=5)
    assert end["status"] == "stopped"
    assert 0 < len(end["content"]) < len("word " * 1000)
    await ws.close()


async def test_the_users_message_is_stored_before_the_provider_is_called(alice, fake_provider):
    fake_provider.script(Reply(text=WORDS, first_token_delay=1.0))
    conv, ws, start = await ask(alice, "stored first")
    for _ in range(100):
        if fake_provider.requests:
            break
        await asyncio.sleep(0.01)
    assert fake_provider.requests
    rows = await rows_of(conv)  # while the provider still thinks
    assert [(m.role, m.content, m.status) for m in rows] == [
        ("user", "stored first", "complete"),
        ("assistant", "", "streaming"),
    ]
    await ws.until("end")
    await ws.close()


# -- the mapping itself ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "kind", "message", "code", "retryable"),
    [
        (401, "authentication_error", "", "provider_auth", False),
        (403, "permission_error", "", "provider_auth", False),
        (429, "rate_limit_error", "", "provider_rate_limited", True),
        (500, "api_error", "", "provider_unavailable", True),
        (503, "", "", "provider_unavailable", True),
        (529, "overloaded_error", "", "provider_unavailable", True),
        (200, "overloaded_error", "", "provider_unavailable", True),
        (400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum", "context_too_long", False),
        (400, "invalid_request_error context_length_exceeded", "", "context_too_long", False),
        (400, "invalid_request_error", "bad things", "provider_unavailable", False),
        (404, "not_found_error", "", "provider_unavailable", False),
    ],
)
def test_it_maps_each_provider_status_to_one_code(status, kind, message, code, retryable):
    error = error_for_status(status, message, kind=kind)
    assert (error.code, error.retryable) == (code, retryable)
    assert "bad things" not in error.message


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "nonsense"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0),
        ({}, None),
    ],
)
def test_it_reads_retry_after(headers, seconds):
    assert parse_retry_after(headers) == seconds


def test_it_reads_retry_after_as_an_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 27 <= parse_retry_after({"retry-after": when}) <= 30
