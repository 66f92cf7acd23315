"""OpenAI Chat Completions (and any OpenAI-compatible server) through the official async SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
from django.conf import settings

from .base import ChatRequest, Provider, ProviderError, Usage, error_for_status, parse_retry_after


def map_error(exc: Exception) -> ProviderError:
    """The SDK's (and httpx's) exceptions as our one error type."""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        kind = f"{body.get('type') or ''} {body.get('code') or ''}"
        return error_for_status(
            exc.status_code, exc.message, kind=kind, retry_after=parse_retry_after(exc.response.headers)
        )
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
        return ProviderError("provider_unavailable", "The provider timed out.", retryable=True)
    if (
        isinstance(exc, openai.APIError)
        and getattr(exc, "body", None)
        and not isinstance(exc, openai.APIConnectionError)
    ):
        # An error object inside a 200 stream.
        body = exc.body if isinstance(exc.body, dict) else {}
        return error_for_status(500, exc.message, kind=f"{body.get('type') or ''} {body.get('code') or ''}")
    if isinstance(exc, openai.APIConnectionError | httpx.HTTPError):
        return ProviderError("provider_unavailable", "Could not reach the provider.", retryable=True)
    return ProviderError("provider_unavailable", f"Unexpected provider failure: {type(exc).__name__}")


class OpenAIProvider(Provider):
    """Streams with `stream_options.include_usage` so the last chunk carries usage."""

    name = "openai"

    def __init__(self) -> None:
        self.client = openai.AsyncOpenAI(
            api_key=settings.OPENAI_API_KEY or "not-set",
            base_url=settings.OPENAI_BASE_URL or None,
            # Retries are ours (generation.py): before the first token only, visible to the user.
            max_retries=0,
            timeout=httpx.Timeout(settings.CHAT_READ_TIMEOUT, connect=settings.CHAT_CONNECT_TIMEOUT),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Usage]:
        messages: list[Any] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend({"role": m["role"], "content": m["content"]} for m in request.messages)
        kwargs: dict[str, Any] = {}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.max_output_tokens:
            kwargs["max_completion_tokens"] = request.max_output_tokens
        usage = Usage()
        try:
            stream = await self.client.chat.completions.create(
                model=request.model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                **kwargs,
            )
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    for choice in chunk.choices:
                        if choice.delta.content:
                            yield choice.delta.content
        except ProviderError:
            raise
        except Exception as exc:  # every SDK/transport failure becomes a ProviderError
            raise map_error(exc) from exc
        yield usage

    async def aclose(self) -> None:
        await self.client.close()
