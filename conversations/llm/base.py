"""The provider interface: one request shape, a stream of text chunks then usage, one error type."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChatRequest:
    """What every provider is asked: a system prompt, the turns in order, and settings."""

    model: str
    system: str
    # {"role": "user"|"assistant", "content": str, or a user turn with files: a list of parts, below}
    messages: list[dict[str, Any]] = field(default_factory=list)
    temperature: float | None = None
    max_output_tokens: int | None = None
    # What the request is for ("chat", "summary", "title"): only the offline demo model looks.
    purpose: str = "chat"
    # One value per conversation: OpenAI routes requests with the same key to the same prompt cache.
    cache_key: str | None = None


# A user turn with files has a list of provider-neutral parts as its content, which each adapter
# turns into its own format:
#   {"type": "text", "text": ...}
#   {"type": "image", "media_type": "image/png", "data": <base64>, "name": ...}
#   {"type": "document", "media_type": "application/pdf", "data": <base64>, "name": ..., "text": <fenced text>}
Content = str | list[dict[str, Any]]


def text_of(content: Content) -> str:
    """The content as plain text, for a model that reads only text: a PDF as its text, an image by name."""
    if isinstance(content, str):
        return content
    pieces = []
    for part in content:
        if part["type"] == "text" or part["type"] == "document":
            pieces.append(part["text"])
        elif part["type"] == "image":
            pieces.append(f"[image: {part.get('name') or 'unnamed'}]")
    return "\n\n".join(p for p in pieces if p)


@dataclass
class Usage:
    """Tokens the provider says it counted; None where it said nothing.

    `input_tokens` is every input token of the request, those read from the prompt cache
    (`cached_input_tokens`) and written to it (`cache_write_tokens`, Anthropic) included.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None


class ProviderError(Exception):
    """Any provider failure, already mapped to a protocol error code."""

    def __init__(self, code: str, message: str, *, retryable: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ProviderError({self.code!r}, {self.message!r}, retryable={self.retryable})"


class Provider(ABC):
    """One LLM service. `stream` yields text chunks, then exactly one Usage at the end."""

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[str | Usage]:
        """Stream the reply to `request`; raise ProviderError on failure."""

    async def complete(self, request: ChatRequest) -> tuple[str, Usage]:
        """The whole reply at once (used by background tasks)."""
        parts: list[str] = []
        usage = Usage()
        async for item in self.stream(request):
            if isinstance(item, Usage):
                usage = item
            else:
                parts.append(item)
        return "".join(parts), usage

    async def list_models(self) -> list[tuple[str, str]]:
        """The provider's models as (id, display name); raise ProviderError on failure."""
        return []

    async def aclose(self) -> None:  # noqa: B027 - most providers hold nothing to release
        """Release network resources."""


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` / `Retry-After` (seconds or an HTTP date); None if absent or bad.

    A malformed header must never turn a retryable failure into a crash.
    """
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            if name == "retry-after-ms":
                continue
            try:
                parsed = email.utils.parsedate_to_datetime(value)
            except (ValueError, TypeError, IndexError):
                return None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            seconds = parsed.timestamp() - time.time()
        return max(0.0, seconds) if math.isfinite(seconds) else None
    return None


def error_for_status(status: int, message: str, *, kind: str = "", retry_after: float | None = None) -> ProviderError:
    """Map an HTTP status (and the provider's error type/code) to our one error type."""
    lowered = f"{kind} {message}".lower()
    if status in (401, 403):
        return ProviderError("provider_auth", "The provider rejected the API key.")
    if "context_length" in lowered or "prompt is too long" in lowered or "maximum context length" in lowered:
        return ProviderError("context_too_long", "The conversation is too long for the model.")
    if status == 429 or "rate_limit" in lowered:
        return ProviderError(
            "provider_rate_limited", "The provider is rate limiting requests.", retryable=True, retry_after=retry_after
        )
    if status in (408, 409) or status >= 500 or "overloaded" in lowered:
        return ProviderError(
            "provider_unavailable", "The provider is unavailable.", retryable=True, retry_after=retry_after
        )
    return ProviderError("provider_unavailable", f"The provider refused the request ({status}).")


class GapGuard:
    """Cancels the task that made it once one of its waits has lasted `gap` seconds.

    One timer for all the waits, re-armed lazily (firing early, it sets itself for the current wait's
    deadline), not one per wait: the waits are per chunk, the hot path. Before a wait set `since` to
    `loop.time()`, after it to None; a CancelledError for which `expired()` is true is the timeout
    (and no longer a cancellation of the task). `close()` when done.
    """

    __slots__ = ("fired", "gap", "handle", "loop", "since", "task")

    def __init__(self, gap: float) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.gap = gap
        self.since: float | None = None  # set while waiting
        self.fired = False
        self.handle = self.loop.call_at(self.loop.time() + gap, self._check)

    def _check(self) -> None:
        if self.task.done():  # its stream was dropped unclosed: nothing left to watch
            return
        now = self.loop.time()
        if self.since is not None and now - self.since >= self.gap:
            self.fired = True
            self.task.cancel()
        else:
            self.handle = self.loop.call_at((self.since if self.since is not None else now) + self.gap, self._check)

    def expired(self) -> bool:
        """Whether the task's cancellation is this guard's, and nobody else's."""
        return self.fired and self.task.uncancel() == 0

    def close(self) -> None:
        self.handle.cancel()


async def within_gap(stream: AsyncIterable[str | Usage], gap: float) -> AsyncIterator[str | Usage]:
    """`stream`, failing with a retryable ProviderError when it yields nothing for `gap` seconds.

    The SDKs' read timeouts catch a silent connection, not one kept busy by keep-alives
    (Anthropic's `ping` events, an OpenAI-compatible proxy's SSE comments) while no text comes.
    """
    guard = GapGuard(gap)
    loop = guard.loop
    iterator = aiter(stream)
    try:
        while True:
            guard.since = loop.time()  # waiting for the provider, not for our caller
            try:
                item = await anext(iterator)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if guard.expired():
                    raise ProviderError(
                        "provider_unavailable", "The provider stopped sending.", retryable=True
                    ) from None
                raise
            guard.since = None
            yield item
    finally:
        guard.close()
        # Release the provider's connection now, not when the garbage collector gets to it.
        if isinstance(iterator, AsyncGenerator):
            await iterator.aclose()
