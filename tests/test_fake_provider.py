"""The fake provider, driven through the real openai and anthropic SDKs over loopback (no Django needed)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pytest

from tests.fakes.provider import FakeProvider, Reply

MSGS = [{"role": "user", "content": "say hello to the test"}]


@pytest.fixture(autouse=True)
def _fast_chat() -> None:
    """Shadows the Django-settings fixture of tests/conftest.py: these tests must not need Django."""


@pytest.fixture(autouse=True)
def _clear_cache() -> None:
    """Shadows the Django-cache fixture of tests/conftest.py."""


@pytest.fixture
def p() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


# The SDKs' own default HTTP clients, minus loading the CA bundle for each one (~70 ms): plain-HTTP loopback only.
def oai(p: FakeProvider) -> openai.AsyncOpenAI:
    http = openai.DefaultAsyncHttpxClient(verify=False)
    return openai.AsyncOpenAI(api_key="test", base_url=p.openai_base_url, max_retries=0, http_client=http)


def ant(p: FakeProvider) -> anthropic.AsyncAnthropic:
    http = anthropic.DefaultAsyncHttpxClient(verify=False)
    return anthropic.AsyncAnthropic(api_key="test", base_url=p.anthropic_base_url, max_retries=0, http_client=http)


async def read_openai(p: FakeProvider, into: list | None = None, **kw: Any) -> list:
    """Stream one chat completion through the SDK, appending chunks to `into` (kept if it raises)."""
    into = [] if into is None else into
    async with oai(p) as client:
        stream = await client.chat.completions.create(
            model="gpt-test", messages=MSGS, stream=True, stream_options={"include_usage": True}, **kw
        )
        async for chunk in stream:
            into.append(chunk)
    return into


async def read_anthropic(p: FakeProvider, into: list | None = None, **kw: Any) -> list:
    """Stream one message through the SDK, appending events to `into` (kept if it raises)."""
    into = [] if into is None else into
    async with ant(p) as client:
        stream = await client.messages.create(model="claude-test", max_tokens=100, messages=MSGS, stream=True, **kw)
        async for event in stream:
            into.append(event)
    return into


def texts_openai(chunks: list) -> list[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


def texts_anthropic(events: list) -> list[str]:
    return [e.delta.text for e in events if e.type == "content_block_delta"]


def test_default_chunking_keeps_whitespace_and_joins_exactly() -> None:
    reply = Reply(text="Hello from  the\nfake ")
    assert reply.pieces() == ["Hello", " from", "  the", "\nfake", " "]
    assert Reply(chunks=["a", "bc"]).pieces() == ["a", "bc"]


def test_openai_stream_text_and_usage(p: FakeProvider) -> None:
    text = "Streaming, with punctuation!\n  And two lines. "
    p.script(Reply(text=text, input_tokens=11))
    chunks = asyncio.run(read_openai(p))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(texts_openai(chunks)) == text
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (11, len(Reply(text=text).pieces()))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_anthropic_stream_text_and_usage(p: FakeProvider) -> None:
    text = "Bonjour, ça va? Très bien.\n"
    p.script(Reply(text=text, output_tokens=42), Reply(text=text))

    async def via_helper() -> Any:
        async with ant(p) as client, client.messages.stream(model="m", max_tokens=9, messages=MSGS) as stream:
            return await stream.get_final_message()

    events = asyncio.run(read_anthropic(p))
    final = asyncio.run(via_helper())
    assert [e.type for e in events[:2]] == ["message_start", "content_block_start"]
    assert [e.type for e in events[-3:]] == ["content_block_stop", "message_delta", "message_stop"]
    assert "".join(texts_anthropic(events)) == text
    assert events[0].message.usage.input_tokens == 5  # words in MSGS
    assert events[-2].usage.output_tokens == 42 and events[-2].delta.stop_reason == "end_turn"
    assert final.content[0].text == text and final.usage.output_tokens == len(Reply(text=text).pieces())


def test_requests_are_recorded_as_sent(p: FakeProvider) -> None:
    async def run() -> None:
        async with oai(p) as o, ant(p) as a:
            await o.chat.completions.create(
                model="gpt-test", messages=[{"role": "system", "content": "Be terse."}, *MSGS]
            )
            await a.messages.create(model="claude-test", max_tokens=9, system="Be kind.", messages=MSGS)

    asyncio.run(run())
    first, second = p.requests
    assert first.path == "/v1/chat/completions" and first.headers["authorization"] == "Bearer test"
    assert first.json["messages"] == [{"role": "system", "content": "Be terse."}, *MSGS]
    # This anthropic SDK sends the key as a bearer token (older ones used x-api-key).
    assert second.path == "/v1/messages" and "anthropic-version" in second.headers
    assert "test" in (second.headers.get("x-api-key"), second.headers.get("authorization", "").removeprefix("Bearer "))
    assert (second.json["system"], second.json["messages"], second.json["max_tokens"]) == ("Be kind.", MSGS, 9)


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_rate_limit_carries_retry_after(p: FakeProvider, sdk: str) -> None:
    p.script(Reply(status=429, retry_after=7, error_message="slow down"))
    with pytest.raises(openai.RateLimitError if sdk == "openai" else anthropic.RateLimitError) as info:
        asyncio.run(read_openai(p) if sdk == "openai" else read_anthropic(p))
    err = info.value
    assert err.status_code == 429 and err.response.headers["retry-after"] == "7"
    if sdk == "openai":
        assert (err.code, err.type, err.body["message"]) == ("rate_limit_exceeded", "requests", "slow down")
    else:
        assert err.type == "rate_limit_error" and err.body["error"]["message"] == "slow down"
        assert err.request_id and err.request_id.startswith("req_")


def test_authentication_errors(p: FakeProvider) -> None:
    p.script(Reply(status=401), Reply(status=401))
    with pytest.raises(openai.AuthenticationError) as oerr:
        asyncio.run(read_openai(p))
    with pytest.raises(anthropic.AuthenticationError) as aerr:
        asyncio.run(read_anthropic(p))
    assert oerr.value.code == "invalid_api_key"
    assert aerr.value.type == "authentication_error"


def test_overloaded_529(p: FakeProvider) -> None:
    p.script(Reply(status=529, error_type="overloaded_error"), Reply(status=529))
    with pytest.raises(anthropic.InternalServerError) as aerr:
        asyncio.run(read_anthropic(p))
    assert isinstance(aerr.value, anthropic.OverloadedError)  # this SDK has a dedicated 529 subclass
    assert (aerr.value.status_code, aerr.value.type) == (529, "overloaded_error")
    with pytest.raises(openai.InternalServerError) as oerr:
        asyncio.run(read_openai(p))
    assert oerr.value.status_code == 529 and oerr.value.type == "server_error"


def test_context_length_exceeded(p: FakeProvider) -> None:
    p.script(*[Reply(status=400, error_type="context_length_exceeded")] * 2)
    with pytest.raises(openai.BadRequestError) as oerr:
        asyncio.run(read_openai(p))
    assert (oerr.value.code, oerr.value.param) == ("context_length_exceeded", "messages")
    assert "maximum context length" in oerr.value.message
    with pytest.raises(anthropic.BadRequestError) as aerr:
        asyncio.run(read_anthropic(p))
    # Anthropic has no such code: it is an invalid_request_error saying "prompt is too long".
    assert aerr.value.type == "invalid_request_error" and "prompt is too long" in aerr.value.message


def test_drop_after_raises_in_each_sdk(p: FakeProvider) -> None:
    p.script(Reply(drop_after=2), Reply(drop_after=2))
    chunks: list = []
    events: list = []
    with pytest.raises(openai.APIConnectionError) as oerr:
        asyncio.run(read_openai(p, chunks))
    assert isinstance(oerr.value.__cause__, httpx2.RemoteProtocolError)
    assert texts_openai(chunks) == ["Hello", " from"]
    # The anthropic SDK does not wrap transport errors raised while iterating a stream.
    with pytest.raises(httpx2.RemoteProtocolError):
        asyncio.run(read_anthropic(p, events))
    assert texts_anthropic(events) == ["Hello", " from"]


def test_in_stream_errors(p: FakeProvider) -> None:
    p.script(Reply(stream_error_after=3), Reply(stream_error_after=1, error_message="Overloaded"))
    chunks: list = []
    events: list = []
    with pytest.raises(openai.APIError) as oerr:
        asyncio.run(read_openai(p, chunks))
    assert not isinstance(oerr.value, openai.APIStatusError | openai.APIConnectionError)
    assert oerr.value.type == "server_error" and texts_openai(chunks) == ["Hello", " from", " the"]
    with pytest.raises(anthropic.APIStatusError) as aerr:
        asyncio.run(read_anthropic(p, events))
    # Built from the 200 response: a plain APIStatusError with status 200, recognisable by `.type`.
    assert type(aerr.value) is anthropic.APIStatusError and aerr.value.status_code == 200
    assert aerr.value.type == "overloaded_error" and aerr.value.body["error"]["message"] == "Overloaded"
    assert texts_anthropic(events) == ["Hello"]


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_hang_after_sends_n_chunks_then_nothing(p: FakeProvider, sdk: str) -> None:
    p.script(Reply(hang_after=2))
    items: list = []

    async def run() -> None:
        await asyncio.wait_for(read_openai(p, items) if sdk == "openai" else read_anthropic(p, items), 0.25)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(run())
    assert (texts_openai(items) if sdk == "openai" else texts_anthropic(items)) == ["Hello", " from"]


def test_stop_releases_hung_streams() -> None:
    provider = FakeProvider(Reply(hang_after=1)).start()
    chunks: list = []

    async def run() -> float:
        reading = asyncio.create_task(read_openai(provider, chunks))
        while len(chunks) < 2:  # the role chunk and "Hello"
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await asyncio.to_thread(provider.stop)
        with pytest.raises(openai.APIConnectionError):
            await asyncio.wait_for(reading, 2)
        return time.monotonic() - started

    assert asyncio.run(run()) < 1.5
    assert texts_openai(chunks) == ["Hello"]


def test_stamp_chunks_are_stamped_when_written(p: FakeProvider) -> None:
    p.script(Reply(stamp=4, token_delay=0.03))
    before = time.time() * 1000
    texts = texts_openai(asyncio.run(read_openai(p)))
    after = time.time() * 1000
    stamps = [re.fullmatch(r"<(\d+)@(\d+\.\d{3})> ", t) for t in texts]
    assert all(stamps) and [int(m[1]) for m in stamps] == [0, 1, 2, 3]  # type: ignore[index]
    times = [float(m[2]) for m in stamps]  # type: ignore[index]
    assert before <= times[0] and times[-1] <= after
    assert all(b - a >= 25 for a, b in zip(times, times[1:], strict=False))  # emission time, not request time


def test_first_token_delay_comes_after_headers(p: FakeProvider) -> None:
    p.script(Reply(first_token_delay=0.3))

    async def run() -> tuple[float, float]:
        async with ant(p) as client:
            started = time.monotonic()
            stream = await client.messages.create(model="m", max_tokens=9, messages=MSGS, stream=True)
            headers_at = time.monotonic() - started
            async for event in stream:
                if event.type == "content_block_delta":
                    return headers_at, time.monotonic() - started
        raise AssertionError("no text")

    headers_at, first_text_at = asyncio.run(run())
    assert headers_at < 0.2 and first_text_at >= 0.29


def test_script_order_then_default(p: FakeProvider) -> None:
    p.default = Reply(text="fallback")
    p.script(Reply(text="one"), Reply(text="two"))

    async def run() -> list[str]:
        async with oai(p) as o, ant(p) as a:
            one = await o.chat.completions.create(model="m", messages=MSGS)
            two = await a.messages.create(model="m", max_tokens=5, messages=MSGS)
            three = await o.chat.completions.create(model="m", messages=MSGS)
            p.script(Reply(text="forgotten"))
            p.clear()
            four = await a.messages.create(model="m", max_tokens=5, messages=MSGS)
        texts = [one.choices[0].message.content, two.content[0].text, three.choices[0].message.content]
        return [*texts, four.content[0].text]

    assert asyncio.run(run()) == ["one", "two", "fallback", "fallback"]
    assert len(p.requests) == 1  # clear() forgot the first three


def test_non_streaming_text_and_usage(p: FakeProvider) -> None:
    p.script(Reply(text="plain answer", input_tokens=3), Reply(text="plain answer"))

    async def run() -> tuple[Any, Any]:
        async with oai(p) as o, ant(p) as a:
            return (
                await o.chat.completions.create(model="m", messages=MSGS),
                await a.messages.create(model="m", max_tokens=5, messages=MSGS),
            )

    o, a = asyncio.run(run())
    assert o.object == "chat.completion" and o.choices[0].message.content == "plain answer"
    assert (o.usage.prompt_tokens, o.usage.completion_tokens, o.usage.total_tokens) == (3, 2, 5)
    assert a.content[0].text == "plain answer" and a.stop_reason == "end_turn"
    assert (a.usage.input_tokens, a.usage.output_tokens) == (5, 2)


def test_unknown_path_is_404_json(p: FakeProvider) -> None:
    async def run() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s, s.post(p.url + "/v1/nope", json={}) as r:
            return r.status, await r.json()

    status, body = asyncio.run(run())
    assert status == 404 and "Invalid URL" in body["error"]["message"]


def test_holds_500_concurrent_slow_streams(p: FakeProvider) -> None:
    p.default = Reply(text="a b", token_delay=0.2)
    n = 500

    async def one(session: aiohttp.ClientSession) -> str:
        body = {"model": "m", "max_tokens": 5, "stream": True, "messages": MSGS}
        async with session.post(p.anthropic_base_url + "/v1/messages", json=body) as r:
            assert r.headers["content-type"].startswith("text/event-stream") and r.headers["request-id"]
            raw = (await r.read()).decode()
        return "".join(re.findall(r'"text_delta","text":"([^"]*)"', raw))

    async def run() -> list[str]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            return await asyncio.gather(*(one(session) for _ in range(n)))

    started = time.monotonic()
    results = asyncio.run(run())
    # One at a time this would take 500 * 2 * 0.2 s = 200 s; concurrently, two token delays plus overhead
    # (up to 8 s measured on a busy shared machine, hence the generous bound: still far from serial).
    assert results == ["a b"] * n and time.monotonic() - started < 30
