"""The load client: simulated users on websockets, the same streams read straight from the provider
(the floor: a raw SSE reader, or the openai SDK's parsed stream), and idle sockets. One asyncio loop,
orjson, no per-frame allocations to speak of; bench/clientproc.py runs it in several processes.

Every token the fake provider sends reads `<i@ms> `: its index and its emission time (ms since the
epoch, same machine clock), so each token's latency is its arrival time minus that stamp.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

TOKEN = re.compile(r"<(\d+)@([\d.]+)> ")


@dataclass
class StreamResult:
    """One reply as the client saw it."""

    ttft_ms: float | None = None
    message_ms: float | None = None  # send -> the `message` event (the user message stored)
    start_ms: float | None = None  # send -> the `start` event (the reply row opened)
    latencies: list[float] = field(default_factory=list)  # per token, ms
    indices: list[int] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)  # per token, its emission time (ms since the epoch)
    gaps: int = 0  # deltas that started past the text the client had
    overlaps: int = 0  # deltas that repeated text the client had
    content_matches: bool = True  # `end.content` equals the text rebuilt from deltas
    status: str = ""
    error: str = ""
    reply_id: int | None = None
    seconds: float = 0.0

    def lost(self, expected: int) -> int:
        return expected - len(set(self.indices) & set(range(expected)))

    def repeated(self) -> int:
        return len(self.indices) - len(set(self.indices))


class _Tokens:
    """Finds stamped tokens in text that arrives in pieces; a token split across pieces still counts once."""

    __slots__ = ("buf", "result")

    def __init__(self, result: StreamResult) -> None:
        self.buf = ""
        self.result = result

    def feed(self, text: str, now_ms: float) -> None:
        buf = self.buf + text
        end = 0
        lat, idx, stamps = self.result.latencies, self.result.indices, self.result.stamps
        for m in TOKEN.finditer(buf):
            idx.append(int(m.group(1)))
            stamp = float(m.group(2))
            stamps.append(stamp)
            lat.append(now_ms - stamp)
            end = m.end()
        self.buf = buf[end:]


# -- the site, over websockets -----------------------------------------------------------------
def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
    )


async def connect(
    session: aiohttp.ClientSession, port: int, user: dict[str, Any], timeout: float = 30
) -> tuple[aiohttp.ClientWebSocketResponse, float, dict[str, Any]]:
    """Open a user's socket on their thread and read the `state` frame; (socket, ms it took, state)."""
    t0 = time.perf_counter()
    ws = await session.ws_connect(
        f"ws://127.0.0.1:{port}/ws/conversations/{user['conversation']}/",
        headers={"Cookie": f"sessionid={user['session']}"},
        origin=f"http://127.0.0.1:{port}",
        autoping=True,
        compress=0,
        max_msg_size=0,
        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5),
    )
    msg = await asyncio.wait_for(ws.receive(), timeout)
    if msg.type != aiohttp.WSMsgType.TEXT:
        await ws.close()
        raise RuntimeError(f"socket closed before `state`: {msg.type} {msg.data!r}")
    state = orjson.loads(msg.data)
    if state.get("type") != "state":
        await ws.close()
        raise RuntimeError(f"first frame was not `state`: {state!r}")
    return ws, (time.perf_counter() - t0) * 1000, state


async def connect_many(
    session: aiohttp.ClientSession,
    ports: list[int],
    users: list[dict[str, Any]],
    concurrency: int = 50,
    *,
    slots: list[int] | None = None,
) -> list[aiohttp.ClientWebSocketResponse]:
    """Sockets for every user (user i on `ports[slots[i] % len(ports)]`, slots default 0, 1, ...),
    `concurrency` handshakes at a time."""
    gate = asyncio.Semaphore(concurrency)
    slots = slots if slots is not None else list(range(len(users)))

    async def one(slot: int, user: dict[str, Any]) -> aiohttp.ClientWebSocketResponse:
        async with gate:
            ws, _, _ = await connect(session, ports[slot % len(ports)], user)
            return ws

    return list(await asyncio.gather(*(one(i, u) for i, u in zip(slots, users, strict=True))))


async def close_many(sockets: list[aiohttp.ClientWebSocketResponse]) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def site_stream(
    ws: aiohttp.ClientWebSocketResponse, timeout: float, *, stop_after_first: bool = False
) -> StreamResult:
    """Send one message on an open socket and read its reply to the end (or `stop` it at its first token)."""
    result = StreamResult()
    tokens = _Tokens(result)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    parts: list[str] = []
    have = 0
    t0 = time.time() * 1000
    frame = {"type": "send", "client_id": str(uuid.uuid4()), "content": "Tell me something."}
    await ws.send_str(orjson.dumps(frame).decode())
    try:
        while True:
            msg = await asyncio.wait_for(ws.receive(), max(0.01, deadline - loop.time()))
            now_ms = time.time() * 1000
            if msg.type != aiohttp.WSMsgType.TEXT:
                result.error = f"socket {msg.type.name}"
                break
            f = orjson.loads(msg.data)
            kind = f["type"]
            if kind == "delta":
                if f["message_id"] != result.reply_id:
                    continue
                offset, text = f["offset"], f["text"]
                if result.ttft_ms is None:
                    result.ttft_ms = now_ms - t0
                    if stop_after_first:
                        await ws.send_str('{"type": "stop"}')
                if offset > have:
                    result.gaps += 1
                elif offset < have:
                    result.overlaps += 1
                    text = text[have - offset :]
                if text:
                    parts.append(text)
                    have = max(have, offset) + len(text)
                    tokens.feed(text, now_ms)
            elif kind == "start":
                result.reply_id = f["message_id"]
                result.start_ms = now_ms - t0
            elif kind == "message" and result.message_ms is None:
                result.message_ms = now_ms - t0
            elif kind == "end" and f["message_id"] == result.reply_id:
                result.status = f["status"]
                result.content_matches = f["content"] == "".join(parts)
                break
            elif kind == "error":
                result.error = f.get("code", "error")
                if result.reply_id is None:
                    break
    except TimeoutError:
        result.error = "timeout"
    result.seconds = (time.time() * 1000 - t0) / 1000
    return result


async def spread(
    jobs: Sequence[tuple[int, Callable[[], Awaitable[StreamResult]]]],
    n: int,
    *,
    ramp: float,
    start: float | None = None,
) -> list[StreamResult]:
    """Run each (slot, job): slot i of n starts at `start` (epoch seconds, default now) + ramp * i / n, so
    the sends of one phase stay spread evenly over the ramp when its slots are shared among processes."""
    start = time.time() if start is None else start

    async def one(slot: int, job: Callable[[], Awaitable[StreamResult]]) -> StreamResult:
        await asyncio.sleep(max(0.0, start + ramp * slot / n - time.time()))
        try:
            return await job()
        except Exception as exc:
            return StreamResult(error=f"{type(exc).__name__}: {exc}")

    return list(await asyncio.gather(*(one(slot, job) for slot, job in jobs)))


async def site_phase(
    sockets: list[aiohttp.ClientWebSocketResponse], *, ramp: float, timeout: float
) -> list[StreamResult]:
    """Every socket sends one message, spread evenly over `ramp` seconds; all replies read to the end."""
    jobs = [(i, functools.partial(site_stream, ws, timeout)) for i, ws in enumerate(sockets)]
    return await spread(jobs, len(sockets), ramp=ramp)


# -- the floor: the same streams straight from the provider ----------------------------------------
# What the openai SDK sends for `chat.completions.create(model="bench", messages=..., stream=True,
# stream_options={"include_usage": True})`.
FLOOR_BODY = orjson.dumps(
    {
        "messages": [{"role": "user", "content": "Tell me something."}],
        "model": "bench",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
)
FLOORS = ("raw", "sdk")


class Floor:
    """Reads one stream straight from the fake provider: `raw` (aiohttp, the SSE `data:` lines split
    and parsed with orjson: cheap enough that the reader is not what saturates) or `sdk` (the openai
    SDK's parsed stream, a pydantic model per chunk: the floor before issue 15)."""

    def __init__(self, kind: str, provider_port: int) -> None:
        if kind not in FLOORS:
            raise ValueError(f"unknown floor {kind!r}: one of {', '.join(FLOORS)}")
        self.kind = kind
        self.url = f"http://127.0.0.1:{provider_port}/v1/chat/completions"
        self.sdk: Any = openai_client(provider_port) if kind == "sdk" else None
        self.http = new_session() if kind == "raw" else None

    async def stream(self, timeout: float) -> StreamResult:
        if self.kind == "sdk":
            return await sdk_stream(self.sdk, timeout)
        assert self.http is not None
        return await raw_stream(self.http, self.url, timeout)

    async def warm(self) -> None:
        """A few tokens of one stream, then hang up: the connection pool, lazy imports, the first parse."""
        await self.stream(timeout=0.3)

    async def aclose(self) -> None:
        if self.sdk is not None:
            await self.sdk.close()
        if self.http is not None:
            await self.http.close()


FLOOR_HEADERS = {"Authorization": "Bearer x", "Content-Type": "application/json", "Accept": "text/event-stream"}


async def raw_stream(http: aiohttp.ClientSession, url: str, timeout: float) -> StreamResult:
    """One stream read as raw server-sent events: each content delta's tokens timed as it is parsed."""
    result = StreamResult(status="complete")
    tokens = _Tokens(result)
    done = False
    t0 = time.time() * 1000
    try:
        async with asyncio.timeout(timeout), http.post(url, data=FLOOR_BODY, headers=FLOOR_HEADERS) as response:
            if response.status != 200:
                raise RuntimeError(f"provider answered {response.status}: {(await response.text())[:200]}")
            buffer = b""
            async for piece in response.content.iter_any():
                buffer += piece
                if b"\n" not in piece:
                    continue
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        continue
                    chunk = orjson.loads(data)
                    if chunk.get("error"):
                        raise RuntimeError(f"in-stream error: {chunk['error']}")
                    # The usage chunk has no choices; every other chunk has one.
                    for choice in chunk.get("choices") or ():
                        content = choice["delta"].get("content")
                        if content:
                            now_ms = time.time() * 1000
                            if result.ttft_ms is None:
                                result.ttft_ms = now_ms - t0
                            tokens.feed(content, now_ms)
        if not done:
            raise RuntimeError("the stream ended before [DONE]")
    except TimeoutError:
        result.status, result.error = "error", "timeout"
    except Exception as exc:
        result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
    result.seconds = (time.time() * 1000 - t0) / 1000
    return result


async def sdk_stream(client: Any, timeout: float) -> StreamResult:
    """One stream read through the openai SDK's parsed stream."""
    result = StreamResult(status="complete")
    tokens = _Tokens(result)
    t0 = time.time() * 1000
    try:
        async with asyncio.timeout(timeout):
            stream = await client.chat.completions.create(
                model="bench",
                messages=[{"role": "user", "content": "Tell me something."}],
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                for choice in chunk.choices:
                    content = choice.delta.content
                    if content:
                        now_ms = time.time() * 1000
                        if result.ttft_ms is None:
                            result.ttft_ms = now_ms - t0
                        tokens.feed(content, now_ms)
    except TimeoutError:
        result.status, result.error = "error", "timeout"
    except Exception as exc:
        result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
    result.seconds = (time.time() * 1000 - t0) / 1000
    return result


async def direct_phase(floor: Floor, n: int, *, ramp: float, timeout: float) -> list[StreamResult]:
    """N streams read straight from the provider in this process, spread evenly over `ramp` seconds."""
    return await spread([(i, functools.partial(floor.stream, timeout)) for i in range(n)], n, ramp=ramp)


def openai_client(provider_port: int) -> Any:
    import openai

    return openai.AsyncOpenAI(api_key="x", base_url=f"http://127.0.0.1:{provider_port}/v1", max_retries=0)


# -- pages ------------------------------------------------------------------------------------------
async def get_page(session: aiohttp.ClientSession, port: int, user: dict[str, Any]) -> tuple[float, int]:
    """GET a thread's page; (ms to the whole body, body bytes)."""
    t0 = time.perf_counter()
    async with session.get(
        f"http://127.0.0.1:{port}/conversations/{user['conversation']}/",
        headers={"Cookie": f"sessionid={user['session']}"},
        allow_redirects=False,
    ) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"page answered {response.status}")
    return (time.perf_counter() - t0) * 1000, len(body)
