"""The openai adapter on its own: raw SSE lines through the real SDK (aiohttp transport), against the fake provider."""

from __future__ import annotations

import gzip
import time

import httpx2
import pytest

from conversations.llm import ChatRequest, ProviderError, Usage, sse
from conversations.llm import openai as adapter
from conversations.llm.openai import OpenAIProvider
from tests import adapters
from tests.fakes.provider import Reply
from tests.live import free_port


async def collect(request: ChatRequest) -> tuple[list[str], Usage | None]:
    return await adapters.collect(OpenAIProvider(), request)


def request(**fields) -> ChatRequest:
    fields.setdefault("model", "gpt-test")
    fields.setdefault("system", "Be brief.")
    fields.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return ChatRequest(**fields)


def _ends(pieces: list[str]) -> set[int]:
    """Where each piece ends in the joined text."""
    ends, at = set(), 0
    for piece in pieces:
        at += len(piece)
        ends.add(at)
    return ends


async def test_it_streams_the_text_exactly_and_the_usage(fake_provider):
    text = "Raw lines " + " ".join(f"t{i}" for i in range(50)) + ' ünï 漢字 🎉 "quoted" \\ end'
    fake_provider.script(Reply(text=text, input_tokens=11, output_tokens=55))
    texts, usage = await collect(request())
    assert "".join(texts) == text
    # Events that arrived in one read are joined; never is a provider's chunk split.
    assert _ends(texts) <= _ends(Reply(text=text).pieces())
    assert usage == Usage(11, 55, cached_input_tokens=0, cache_write_tokens=0)


async def test_it_yields_chunks_as_they_come_and_joins_those_that_wait(fake_provider, monkeypatch):
    from conversations.llm import openai as adapter

    words = " ".join(f"w{i}" for i in range(10))
    # 30 ms apart: each read finds one event (a reader held up for 30 ms would find two, joined).
    fake_provider.script(Reply(text=words, token_delay=0.03))
    texts, _ = await collect(request())
    assert "".join(texts) == words and len(texts) > 1
    # With the join off (the benchmark's `no-read-join`), every event is its own piece, however they arrive.
    monkeypatch.setattr(adapter, "JOIN_READS", False)
    fake_provider.script(Reply(text=words))
    texts, _ = await collect(request())
    assert texts == Reply(text=words).pieces()


async def test_it_sends_the_history_as_the_requests_messages(fake_provider):
    fake_provider.script(Reply(text="ok"))
    turns = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "second"},
        {"role": "user", "content": "third"},
    ]
    await collect(request(messages=turns, temperature=0.3, max_output_tokens=77))
    body = fake_provider.requests[-1].json
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, *turns]
    assert body["model"] == "gpt-test"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["max_completion_tokens"]) == (0.3, 77)


async def test_it_maps_an_error_object_inside_the_stream(fake_provider):
    fake_provider.script(Reply(text="a b c d", stream_error_after=2, error_type="overloaded_error"))
    provider = OpenAIProvider()
    texts = []
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(request()):
            texts.append(item)
    await provider.aclose()
    assert "".join(texts) == "a b"  # what came before the error, whether in one read or two
    assert (caught.value.code, caught.value.retryable) == ("provider_unavailable", True)


async def test_it_maps_a_refused_connection_as_unreachable(settings):
    settings.OPENAI_API_KEY = "x"
    settings.OPENAI_BASE_URL = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(ProviderError) as caught:
        await collect(request())
    assert (caught.value.code, caught.value.message, caught.value.retryable) == (
        "provider_unavailable",
        "Could not reach the provider.",
        True,
    )


async def test_it_maps_a_silent_stream_as_a_timeout(fake_provider, settings):
    settings.CHAT_READ_TIMEOUT = 0.3
    fake_provider.script(Reply(text="a b c", hang_after=1))
    with pytest.raises(ProviderError) as caught:
        await collect(request())
    assert (caught.value.code, caught.value.message) == ("provider_unavailable", "The provider timed out.")


@pytest.mark.parametrize("guarded", [True, False])
@pytest.mark.parametrize("silence", ["between reads", "before the headers"])
async def test_a_silent_provider_is_timed_out_by_the_guard_or_by_aiohttp(
    fake_provider, settings, monkeypatch, guarded, silence
):
    """With the adapter's own guard (the default) or aiohttp's read timeout (the `aiohttp-read-timer`
    variant), the same silence ends the same way: after one chunk, or before the response's headers."""
    monkeypatch.setattr(adapter, "GUARD_READS", guarded)
    settings.CHAT_READ_TIMEOUT = 0.3
    if silence == "between reads":
        fake_provider.script(Reply(text="a b c", hang_after=1))
    else:
        fake_provider.script(Reply(text="late", headers_delay=5))
    began = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        await collect(request())
    assert time.monotonic() - began < 3
    assert (caught.value.code, caught.value.message, caught.value.retryable) == (
        "provider_unavailable",
        "The provider timed out.",
        True,
    )


async def test_a_guarded_stream_arms_no_timer_per_read(fake_provider, settings):
    """aiohttp's connection is given no read timeout (no timer set and cancelled per read), and a
    stream slower than the gap in all but its pauses is not cut."""
    settings.CHAT_READ_TIMEOUT = 0.3
    fake_provider.script(Reply(text=" ".join(f"w{i}" for i in range(12)), token_delay=0.1))
    provider = OpenAIProvider()
    texts, timeouts = [], []
    try:
        async for item in provider.stream(request()):
            if isinstance(item, str):
                texts.append(item)
                for conn in provider.client._client._transport.client.connector._conns.values():
                    timeouts += [proto._read_timeout for proto, _ in conn]
                for proto in provider.client._client._transport.client.connector._acquired:
                    timeouts.append(proto._read_timeout)
    finally:
        await provider.aclose()
    assert "".join(texts) == " ".join(f"w{i}" for i in range(12))  # 1.2 s in all, no gap of 0.3 s
    assert timeouts and set(timeouts) == {None}


async def test_the_body_is_read_from_aiohttp_itself(fake_provider):
    """Through the SDK's own aiohttp transport (tests/adapters.py, `raw_body`)."""
    fake_provider.script(Reply(text="one two"))
    provider = OpenAIProvider()
    try:
        async with provider.client.chat.completions.with_streaming_response.create(
            model="gpt-test", messages=[{"role": "user", "content": "Hi"}], stream=True
        ) as response:
            body = await adapters.raw_body(response)
    finally:
        await provider.aclose()
    assert b"data: [DONE]" in body


async def test_a_compressed_body_is_decoded_through_httpx():
    lines = b'data: {"a": 1}\n\ndata: [DONE]\n\n'
    response = httpx2.Response(200, headers={"content-encoding": "gzip"}, content=gzip.compress(lines))
    assert [d async for batch in sse.data_lines(response, adapter.TRANSPORT_ERRORS) for d in batch] == [
        b'{"a": 1}',
        b"[DONE]",
    ]


async def test_it_finds_data_lines_however_the_bytes_are_split():
    body = b': a comment\r\ndata: {"a": 1}\r\n\r\ndata:{"b": 2}\n\nevent: ignored\ndata: {"c": "x\\ny"}\n\ndata: [DONE]'

    async def pieces(size: int):
        for i in range(0, len(body), size):
            yield body[i : i + size]

    for size in (1, 3, 7, len(body)):
        response = httpx2.Response(200, content=pieces(size))
        assert [d async for batch in sse.data_lines(response, adapter.TRANSPORT_ERRORS) for d in batch] == [
            b'{"a": 1}',
            b'{"b": 2}',
            b'{"c": "x\\ny"}',
            b"[DONE]",
        ]
    # The events one read completes come as one batch.
    whole = httpx2.Response(200, content=pieces(len(body)))
    assert [len(batch) async for batch in sse.data_lines(whole, adapter.TRANSPORT_ERRORS)] == [3, 1]
