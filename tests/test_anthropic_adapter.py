"""The anthropic adapter on its own: raw SSE lines through the real SDK (aiohttp transport), against the
fake provider; and the same replies, errors and silences through the SDK's parsed stream (`RAW_READS`
off, the benchmark's `anthropic-sdk-stream` variant), which must end the same way."""

from __future__ import annotations

import time

import pytest

from conversations.llm import ChatRequest, ProviderError, Usage
from conversations.llm import anthropic as adapter
from conversations.llm.anthropic import AnthropicProvider
from tests import adapters
from tests.fakes.provider import Reply

both_paths = pytest.mark.parametrize("raw", [True, False], indirect=True, ids=["raw", "sdk-stream"])


@pytest.fixture
def raw(request, monkeypatch):
    monkeypatch.setattr(adapter, "RAW_READS", request.param)
    return request.param


async def collect(request: ChatRequest) -> tuple[list[str], Usage | None]:
    return await adapters.collect(AnthropicProvider(), request)


def request(**fields) -> ChatRequest:
    fields.setdefault("model", "claude-test")
    fields.setdefault("system", "Be brief.")
    fields.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return ChatRequest(**fields)


@both_paths
async def test_it_streams_the_text_exactly_and_the_usage(fake_provider, raw):
    text = "Raw lines " + " ".join(f"t{i}" for i in range(50)) + ' ünï 漢字 🎉 "quoted" \\ end'
    fake_provider.script(
        Reply(text=text, input_tokens=40, output_tokens=55, cached_input_tokens=10, cache_write_tokens=20)
    )
    texts, usage = await collect(request())
    assert "".join(texts) == text
    # Anthropic counts the cache's reads and writes apart from `input_tokens`: they are added back.
    assert usage == Usage(40, 55, cached_input_tokens=10, cache_write_tokens=20)


async def test_it_yields_chunks_as_they_come_and_joins_those_that_wait(fake_provider):
    words = " ".join(f"w{i}" for i in range(10))
    # 30 ms apart: each read finds one event (a reader held up for 30 ms would find two, joined).
    fake_provider.script(Reply(text=words, token_delay=0.03))
    texts, _ = await collect(request())
    assert "".join(texts) == words and len(texts) > 1
    # All at once: the events one read brings leave as one piece, never a provider's chunk split.
    fake_provider.script(Reply(text=words))
    texts, _ = await collect(request())
    assert "".join(texts) == words and len(texts) < len(Reply(text=words).pieces())


@both_paths
async def test_it_sends_the_request_the_sdk_builds(fake_provider, raw):
    fake_provider.script(Reply(text="ok"))
    turns = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "second"}]
    await collect(request(messages=[*turns, {"role": "user", "content": "third"}], temperature=0.3))
    sent = fake_provider.requests[-1]
    assert sent.headers.get("anthropic-version") and sent.json["stream"] is True
    assert (sent.json["system"], sent.json["temperature"], sent.json["max_tokens"]) == ("Be brief.", 0.3, 4096)
    assert sent.json["messages"][:2] == turns
    assert sent.json["messages"][2]["content"] == [
        {"type": "text", "text": "third", "cache_control": {"type": "ephemeral"}}
    ]


@both_paths
@pytest.mark.parametrize(("kind", "retryable"), [("overloaded_error", True), ("invalid_request_error", False)])
async def test_it_maps_an_error_event_inside_the_stream(fake_provider, raw, kind, retryable):
    fake_provider.script(Reply(text="a b c d", stream_error_after=2, error_type=kind))
    provider = AnthropicProvider()
    texts = []
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(request()):
            texts.append(item)
    await provider.aclose()
    assert "".join(texts) == "a b"  # what came before the error, whether in one read or two
    assert (caught.value.code, caught.value.retryable) == ("provider_unavailable", retryable)


@both_paths
async def test_a_stream_cut_before_its_end_is_not_a_whole_reply(fake_provider, raw):
    fake_provider.script(Reply(text="a b c d", end_after=2))
    with pytest.raises(ProviderError) as caught:
        await collect(request())
    assert (caught.value.message, caught.value.retryable) == ("The provider ended the reply early.", True)


@both_paths
@pytest.mark.parametrize("silence", ["between reads", "before the headers"])
async def test_a_silent_provider_is_timed_out(fake_provider, settings, raw, silence):
    """By the adapter's own guard (raw reads) or by the SDK's read timeout: the same silence ends the same way."""
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


async def test_the_body_is_read_from_aiohttp_itself(fake_provider):
    """Through the SDK's own aiohttp transport (tests/adapters.py, `raw_body`)."""
    fake_provider.script(Reply(text="one two"))
    provider = AnthropicProvider()
    try:
        async with provider.client.messages.with_streaming_response.create(
            model="claude-test", messages=[{"role": "user", "content": "Hi"}], max_tokens=10, stream=True
        ) as response:
            body = await adapters.raw_body(response)
    finally:
        await provider.aclose()
    assert b"event: message_stop" in body
