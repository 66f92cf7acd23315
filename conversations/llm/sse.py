"""A provider's server-sent events read raw: the `data:` payloads each read of the body completes.

Both adapters send their request through their SDK (auth, headers, status errors) and read the body
themselves, parsing each payload with orjson: the SDKs' parsed streams (a pydantic model per event,
read through httpx2's byte iterators) cost several times the CPU per token (docs/performance.md).
Imported by the adapters only, with their SDK: `conversations.llm` itself loads neither aiohttp nor httpx2.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import httpx2

from .base import GapGuard

# The body is read from aiohttp's response directly, not through httpx2's byte iterators (four async
# generators a read), when nothing needs decoding (the benchmark's `sdk-reads` variant sets this off).
DIRECT_READS = True

# The SDK's own exception classes for a read that timed out and one that failed, as its parsed stream
# raises them, so that each adapter's `map_error` treats both paths alike: (timeout, unreachable).
TransportErrors = tuple[Callable[..., Exception], Callable[..., Exception]]


async def data_lines(
    response: httpx2.Response, errors: TransportErrors, guard: GapGuard | None = None
) -> AsyncIterator[list[bytes]]:
    """The `data:` payloads of a server-sent event stream, one per line (both providers send one-line
    events), in batches: those completed by one read of the body. `guard`, if given, watches each read."""
    buffer = b""
    try:
        read = reader(response)
        while True:
            if guard is not None:
                guard.since = guard.loop.time()
            piece = await read()
            if guard is not None:
                guard.since = None
            if not piece:
                break
            buffer += piece
            if b"\n" not in piece:
                continue
            *lines, buffer = buffer.split(b"\n")
            batch = [line[5:].strip() for line in lines if line.startswith(b"data:")]
            if batch:
                yield batch
    except (httpx2.TimeoutException, aiohttp.ServerTimeoutError) as exc:  # aiohttp's: read directly
        raise errors[0](request=response.request) from exc
    except (httpx2.RequestError, aiohttp.ClientError) as exc:
        raise errors[1](request=response.request) from exc
    if buffer.startswith(b"data:"):
        yield [buffer[5:].strip()]


def reader(response: httpx2.Response) -> Callable[[], Awaitable[bytes]]:
    """What reads the next piece of the body (b"" at its end): aiohttp's own reader when the SDK's
    aiohttp transport carries a body that needs no decoding; else httpx2's iterator. Private parts
    relied on (pinned by tests/test_openai_adapter.py and tests/test_anthropic_adapter.py): httpx2's
    client wraps the transport's stream in a `BoundAsyncStream` (`_stream`), and the SDKs' vendored
    httpx_aiohttp keeps aiohttp's response in its stream's `_aiohttp_response`."""
    stream = getattr(response.stream, "_stream", response.stream)
    raw = getattr(stream, "_aiohttp_response", None)
    if DIRECT_READS and raw is not None and response.headers.get("content-encoding", "identity") == "identity":
        return raw.content.readany
    pieces = response.aiter_bytes()

    async def read() -> bytes:
        return await anext(pieces, b"")

    return read
