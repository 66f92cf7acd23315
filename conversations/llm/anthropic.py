"""Anthropic Messages API through the official async SDK; the system prompt goes in `system`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import anthropic
import anyio
import httpx2
import orjson
from anthropic import AsyncStream
from anthropic.types import (
    RawContentBlockDeltaEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    RawMessageStreamEvent,
    TextDelta,
)
from django.conf import settings

from . import sse
from .base import ChatRequest, Content, GapGuard, Provider, ProviderError, Usage, error_for_status, parse_retry_after

DEFAULT_MAX_TOKENS = 4096

# The stream is read as the OpenAI adapter reads its own (sse.py): the SDK sends the request over its
# aiohttp transport, and the events' `data:` lines are parsed with orjson, the text of one read
# yielded as one piece, each read watched by one lazily re-armed timer (`GapGuard`) instead of a
# read timeout. The SDK's parsed stream (a pydantic model per event, read through httpx2's
# pure-Python transport) cost 3.4 times the OpenAI adapter's CPU per token (docs/performance.md,
# thirteenth session). The benchmark's `anthropic-sdk-stream` variant sets this off.
RAW_READS = True

# How the SDK's parsed stream reports a read that timed out and one that failed (sse.py raises them).
TRANSPORT_ERRORS: sse.TransportErrors = (anthropic.APITimeoutError, anthropic.APIConnectionError)


def map_error(exc: Exception) -> ProviderError:
    """The SDK's (and its transport's) exceptions as our one error type."""
    if isinstance(exc, anthropic.APIStatusError):
        body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
        error: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else {}
        return error_for_status(
            exc.status_code,
            exc.message,
            kind=str(error.get("type") or ""),
            retry_after=parse_retry_after(exc.response.headers),
        )
    # The SDK wraps transport failures while sending the request, not while the body streams:
    # then httpx2's (the SDK's transport's) own exceptions come through as they are.
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
        return ProviderError("provider_unavailable", "The provider timed out.", retryable=True)
    if isinstance(exc, anthropic.APIConnectionError | httpx2.HTTPError | anyio.EndOfStream | OSError):
        return ProviderError("provider_unavailable", "Could not reach the provider.", retryable=True)
    if isinstance(exc, anthropic.APIError):
        # e.g. an `event: error` inside a 200 stream (overloaded_error counts as retryable).
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body["error"] if isinstance(body.get("error"), dict) else {}
        return error_for_status(500, exc.message, kind=str(error.get("type") or exc.message))
    return ProviderError("provider_unavailable", f"Unexpected provider failure: {type(exc).__name__}")


def anthropic_content(content: Content) -> list[dict[str, Any]]:
    """A turn's content as Messages API blocks: images as base64 `image`, PDFs as base64 `document`."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if part["type"] == "image":
            source = {"type": "base64", "media_type": part["media_type"], "data": part["data"]}
            blocks.append({"type": "image", "source": source})
        elif part["type"] == "document" and part.get("data"):
            source = {"type": "base64", "media_type": "application/pdf", "data": part["data"]}
            blocks.append({"type": "document", "source": source, "title": part.get("name") or "document.pdf"})
        elif part.get("text"):  # text, or a PDF for a model that does not read PDFs: its text
            blocks.append({"type": "text", "text": part["text"]})
    return blocks


def merged_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic wants alternating turns starting with the user: merge repeats, drop a leading reply.

    Plain-text turns stay strings; a turn with files (or merged with one) becomes a list of blocks.
    """
    turns: list[dict[str, Any]] = []
    for m in messages:
        content = m["content"]
        if turns and turns[-1]["role"] == m["role"]:
            before = turns[-1]["content"]
            if isinstance(before, str) and isinstance(content, str):
                merged: Any = before + "\n\n" + content
            else:
                merged = anthropic_content(before) + anthropic_content(content)
            turns[-1] = {"role": m["role"], "content": merged}
        else:
            turns.append(
                {"role": m["role"], "content": content if isinstance(content, str) else anthropic_content(content)}
            )
    while turns and turns[0]["role"] != "user":
        turns.pop(0)
    return turns


EPHEMERAL = {"type": "ephemeral"}


def cached_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The turns with a cache breakpoint on the last one: the whole request (system prompt included)
    is written to the cache, and the next request (the same turns plus two) reads it back up to there
    (Anthropic looks back up to 20 blocks from a breakpoint for an earlier cached prefix)."""
    turns: list[dict[str, Any]] = list(merged_turns(messages))
    if turns:
        last = turns[-1]
        content = last["content"]
        if isinstance(content, str):
            blocks = [{"type": "text", "text": content, "cache_control": EPHEMERAL}]
        else:  # a turn with files: the breakpoint goes on its last block
            blocks = [*content[:-1], {**content[-1], "cache_control": EPHEMERAL}]
        turns[-1] = {"role": last["role"], "content": blocks}
    return turns


def add_usage(usage: Usage, counted: Any) -> None:
    """Fold an event's usage (a raw event's dict, or the SDK's object) into `usage`; `input_tokens`
    gets the cache's reads and writes added, which Anthropic counts apart from it."""
    if not isinstance(counted, Mapping):
        counted = {name: getattr(counted, name, None) for name in USAGE_FIELDS}
    fresh = counted.get("input_tokens")
    read = counted.get("cache_read_input_tokens")
    written = counted.get("cache_creation_input_tokens")
    if fresh is not None:
        # message_delta may repeat the counts (cumulative), or carry input_tokens without the cache's.
        if read is not None or usage.cached_input_tokens is None:
            usage.cached_input_tokens = read or 0
        if written is not None or usage.cache_write_tokens is None:
            usage.cache_write_tokens = written or 0
        usage.input_tokens = fresh + usage.cached_input_tokens + usage.cache_write_tokens
    if counted.get("output_tokens") is not None:
        usage.output_tokens = counted["output_tokens"]


USAGE_FIELDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")


class AnthropicProvider(Provider):
    """Streams raw message events: text deltas, input tokens at the start, output tokens at the end."""

    def __init__(self) -> None:
        self.client = anthropic.AsyncAnthropic(
            api_key=settings.ANTHROPIC_API_KEY or "not-set",
            base_url=settings.ANTHROPIC_BASE_URL or None,
            max_retries=0,
            timeout=anthropic.Timeout(settings.CHAT_READ_TIMEOUT, connect=settings.CHAT_CONNECT_TIMEOUT),
            # The SDK's aiohttp transport (its `aiohttp` extra), as the OpenAI adapter's: aiohttp's C
            # parser reads the body, not httpx2's pure-Python stack.
            http_client=anthropic.DefaultAioHttpClient() if RAW_READS else None,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Usage]:
        kwargs: dict[str, Any] = {}
        if request.system:
            # A plain string: the breakpoint on the last turn caches the prefix it heads as well.
            kwargs["system"] = request.system
        if request.temperature is not None:
            # This SDK's `create` no longer takes `temperature` (a TypeError, so every summary, which
            # asks for 0.2, failed): the API's field goes in the body as it is.
            kwargs["extra_body"] = {"temperature": request.temperature}
        if RAW_READS:
            async for item in self._raw_stream(request, kwargs):
                yield item
            return
        usage = Usage()
        stopped = False
        try:
            # `stream=True` with **kwargs defeats the SDK's overloads: say which one this is.
            stream = cast(
                "AsyncStream[RawMessageStreamEvent]",
                await self.client.messages.create(
                    model=request.model,
                    messages=cached_turns(request.messages),  # type: ignore[arg-type]
                    max_tokens=request.max_output_tokens or DEFAULT_MAX_TOKENS,
                    stream=True,
                    **kwargs,
                ),
            )
            async with stream:
                async for event in stream:
                    if isinstance(event, RawContentBlockDeltaEvent):
                        if isinstance(event.delta, TextDelta) and event.delta.text:
                            yield event.delta.text
                    elif isinstance(event, RawMessageStartEvent):
                        add_usage(usage, event.message.usage)
                    elif isinstance(event, RawMessageDeltaEvent):
                        add_usage(usage, event.usage)
                    elif isinstance(event, RawMessageStopEvent):
                        stopped = True
        except ProviderError:
            raise
        except Exception as exc:  # every SDK/transport failure becomes a ProviderError
            raise map_error(exc) from exc
        if not stopped:
            # The body ended cleanly but before `message_stop`: a cut stream, not a whole reply.
            raise ProviderError("provider_unavailable", "The provider ended the reply early.", retryable=True)
        yield usage

    async def _raw_stream(self, request: ChatRequest, kwargs: dict[str, Any]) -> AsyncIterator[str | Usage]:
        usage = Usage()
        stopped = False
        guard = GapGuard(settings.CHAT_READ_TIMEOUT)
        guard.since = guard.loop.time()  # until the response's headers
        try:
            async with self.client.messages.with_streaming_response.create(
                model=request.model,
                messages=cached_turns(request.messages),  # type: ignore[arg-type]
                max_tokens=request.max_output_tokens or DEFAULT_MAX_TOKENS,
                stream=True,
                timeout=anthropic.Timeout(None, connect=settings.CHAT_CONNECT_TIMEOUT),
                **kwargs,
            ) as response:
                guard.since = None
                async for batch in sse.data_lines(response.http_response, TRANSPORT_ERRORS, guard):
                    texts: list[str] = []
                    for data in batch:
                        event = orjson.loads(data)
                        if not isinstance(event, dict):
                            continue
                        kind = event.get("type")
                        if kind == "content_block_delta":
                            delta = event.get("delta") or {}
                            if delta.get("type") == "text_delta" and delta.get("text"):
                                texts.append(delta["text"])
                        elif kind == "message_start":
                            add_usage(usage, (event.get("message") or {}).get("usage") or {})
                        elif kind == "message_delta":
                            add_usage(usage, event.get("usage") or {})
                        elif kind == "message_stop":
                            stopped = True
                        elif kind == "error":
                            if texts:
                                yield "".join(texts)  # what came before the error is the reply's
                            # As the SDK raises it: a status error on the 200 response, with the event as its body.
                            raise anthropic.APIStatusError(f"{event}", response=response.http_response, body=event)
                    if texts:
                        yield texts[0] if len(texts) == 1 else "".join(texts)
        except ProviderError:
            raise
        except asyncio.CancelledError:
            if guard.expired():
                raise ProviderError("provider_unavailable", "The provider timed out.", retryable=True) from None
            raise
        except Exception as exc:  # every SDK/transport failure becomes a ProviderError
            raise map_error(exc) from exc
        finally:
            guard.close()
        if not stopped:
            # The body ended cleanly but before `message_stop`: a cut stream, not a whole reply.
            raise ProviderError("provider_unavailable", "The provider ended the reply early.", retryable=True)
        yield usage

    async def list_models(self) -> list[tuple[str, str]]:
        """Anthropic's models endpoint (`GET /v1/models`, paged by the SDK)."""
        try:
            return [(m.id, m.display_name or m.id) async for m in self.client.models.list()]
        except Exception as exc:
            raise map_error(exc) from exc

    async def aclose(self) -> None:
        await self.client.close()
