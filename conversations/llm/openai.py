"""OpenAI Chat Completions (and any OpenAI-compatible server) through the official async SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import openai
import orjson
from django.conf import settings

from . import sse
from .base import (
    ChatRequest,
    Content,
    GapGuard,
    Provider,
    ProviderError,
    Usage,
    error_for_status,
    parse_retry_after,
)

# The text of the events one read of the stream completes is yielded as one piece (the benchmark's
# `no-read-join` variant sets this off: docs/performance.md).
JOIN_READS = True
# A stream's request is sent without a read timeout, so aiohttp sets and cancels no timer on each read;
# one lazily re-armed timer of ours (`GapGuard`) bounds the wait for the headers and every read instead
# (the `aiohttp-read-timer` variant sets this off: docs/performance.md).
GUARD_READS = True


# How the SDK's parsed stream reports a read that timed out and one that failed (sse.py raises them).
TRANSPORT_ERRORS: sse.TransportErrors = (openai.APITimeoutError, openai.APIConnectionError)


def map_error(exc: Exception) -> ProviderError:
    """The SDK's (and its transport's, httpx2's) exceptions as our one error type."""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        kind = f"{body.get('type') or ''} {body.get('code') or ''}"
        return error_for_status(
            exc.status_code, exc.message, kind=kind, retry_after=parse_retry_after(exc.response.headers)
        )
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException) and not _refused(exc):
        return ProviderError("provider_unavailable", "The provider timed out.", retryable=True)
    if (
        isinstance(exc, openai.APIError)
        and getattr(exc, "body", None)
        and not isinstance(exc, openai.APIConnectionError)
    ):
        # An error object inside a 200 stream.
        body = exc.body if isinstance(exc.body, dict) else {}
        return error_for_status(500, exc.message, kind=f"{body.get('type') or ''} {body.get('code') or ''}")
    if isinstance(exc, openai.APIConnectionError | httpx2.HTTPError):
        return ProviderError("provider_unavailable", "Could not reach the provider.", retryable=True)
    return ProviderError("provider_unavailable", f"Unexpected provider failure: {type(exc).__name__}")


def _refused(exc: BaseException) -> bool:
    """A refused or unresolvable connection, which the SDK's aiohttp transport reports as a timeout."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__
    return False


def openai_content(content: Content) -> Any:
    """A turn's content in Chat Completions' format: images as `image_url` data URLs, PDFs as their text."""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if part["type"] == "image":
            url = f"data:{part['media_type']};base64,{part['data']}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif part["type"] == "document":
            parts.append({"type": "text", "text": part["text"]})
        else:
            parts.append({"type": "text", "text": part["text"]})
    return parts


class OpenAIProvider(Provider):
    """Streams with `stream_options.include_usage` so the last chunk carries usage."""

    def __init__(self) -> None:
        self.client = openai.AsyncOpenAI(
            api_key=settings.OPENAI_API_KEY or "not-set",
            base_url=settings.OPENAI_BASE_URL or None,
            # Retries are ours (generation.py): before the first token only, visible to the user.
            max_retries=0,
            # The SDK's own Timeout type (httpx2's): an `httpx.Timeout` puts an object where a
            # number belongs, and the connect timeout is lost.
            timeout=openai.Timeout(settings.CHAT_READ_TIMEOUT, connect=settings.CHAT_CONNECT_TIMEOUT),
            http_client=self.http_client(),
        )

    @staticmethod
    def http_client() -> httpx2.AsyncClient:
        """The SDK's aiohttp transport (its `aiohttp` extra): reading a chunk through httpx2's
        pure-Python stack (httpcore, h11, an anyio cancel scope per read) was ~40% of the
        server's CPU per token; aiohttp's C parser does it for about a third of that."""
        return openai.DefaultAioHttpClient()

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Usage]:
        messages: list[Any] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend({"role": m["role"], "content": openai_content(m["content"])} for m in request.messages)
        kwargs: dict[str, Any] = {}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.max_output_tokens:
            kwargs["max_completion_tokens"] = request.max_output_tokens
        body: dict[str, Any] = {"messages": messages}
        if request.cache_key:
            # Requests with the same key and prefix reach the same cache (one key per conversation).
            body["prompt_cache_key"] = request.cache_key
        usage = Usage()
        finished = False  # a finish_reason or [DONE] seen: the reply is whole
        guard = None
        if GUARD_READS:
            kwargs["timeout"] = openai.Timeout(None, connect=settings.CHAT_CONNECT_TIMEOUT)
            guard = GapGuard(settings.CHAT_READ_TIMEOUT)
            guard.since = guard.loop.time()  # until the response's headers
        try:
            # The SDK sends the request (auth, headers, status errors as APIStatusError); we read
            # the raw SSE lines and parse them with orjson: the SDK's per-chunk pydantic models
            # were a sixth of the server's CPU per token (docs/performance.md).
            async with self.client.chat.completions.with_streaming_response.create(
                model=request.model,
                # The history goes in `extra_body`, which the SDK sends as it is: its per-message
                # TypedDict transform (a no-op for text messages) cost ~0.2 ms a message, every
                # request, a third of a reply's fixed CPU. The JSON on the wire is the same.
                messages=[],
                extra_body=body,
                stream=True,
                stream_options={"include_usage": True},
                **kwargs,
            ) as response:
                if guard is not None:
                    guard.since = None
                async for batch in sse.data_lines(response.http_response, TRANSPORT_ERRORS, guard):
                    # The events of one read leave as one piece of text: when the process is behind,
                    # several tokens wait in the socket's buffer, and relaying them as one delta costs
                    # one event instead of many (docs/performance.md). Unhurried, a read holds one event.
                    texts: list[str] = []
                    for data in batch:
                        if data.startswith(b"[DONE]"):
                            finished = True
                            continue  # read on to the end of the body so the connection can be reused
                        chunk = orjson.loads(data)
                        if not isinstance(chunk, dict):
                            continue
                        if chunk.get("error"):
                            if texts:
                                yield "".join(texts)  # what came before the error is the reply's
                            raise _stream_error(chunk["error"], response.http_response.request)
                        if chunk.get("usage"):
                            usage = parse_usage(chunk["usage"])
                        for choice in chunk.get("choices") or ():
                            content = (choice.get("delta") or {}).get("content")
                            if content:
                                texts.append(content)
                            if choice.get("finish_reason"):
                                finished = True
                    if not JOIN_READS:
                        for text in texts:
                            yield text
                    elif texts:
                        yield texts[0] if len(texts) == 1 else "".join(texts)
            if not finished:
                # The body ended cleanly but without a finish_reason or [DONE] (a proxy or a server
                # that cut it): a partial reply, not a whole one.
                raise ProviderError("provider_unavailable", "The provider ended the reply early.", retryable=True)
        except ProviderError:
            raise
        except asyncio.CancelledError:
            if guard is not None and guard.expired():
                raise ProviderError("provider_unavailable", "The provider timed out.", retryable=True) from None
            raise
        except Exception as exc:  # every SDK/transport failure becomes a ProviderError
            raise map_error(exc) from exc
        finally:
            if guard is not None:
                guard.close()
        yield usage

    async def list_models(self) -> list[tuple[str, str]]:
        """`GET /v1/models` (OpenAI's, or any OpenAI-compatible server's)."""
        try:
            return [(m.id, m.id) async for m in self.client.models.list()]
        except Exception as exc:
            raise map_error(exc) from exc

    async def aclose(self) -> None:
        await self.client.close()


def parse_usage(counted: dict[str, Any]) -> Usage:
    """Chat Completions usage: `prompt_tokens` include the cached ones (`prompt_tokens_details.cached_tokens`)."""
    details = counted.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        input_tokens=counted.get("prompt_tokens"),
        output_tokens=counted.get("completion_tokens"),
        cached_input_tokens=cached if isinstance(cached, int) else 0 if counted.get("prompt_tokens") else None,
        cache_write_tokens=0 if counted.get("prompt_tokens") is not None else None,
    )


def _stream_error(error: object, request: httpx2.Request) -> openai.APIError:
    """An error object inside a 200 stream, as the SDK raises it."""
    message = error.get("message") if isinstance(error, dict) else None
    if not message or not isinstance(message, str):
        message = "An error occurred during streaming"
    return openai.APIError(message, request, body=error)
