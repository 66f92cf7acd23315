"""The load client: simulated users on websockets, the same streams read straight from the provider
with the openai SDK, and idle sockets. One asyncio process, orjson, no per-frame allocations to speak of.

Every token the fake provider sends reads `<i@ms> `: its index and its emission time (ms since the
epoch, same machine clock), so each token's latency is its arrival time minus that stamp.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
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
        lat, idx = self.result.latencies, self.result.indices
        for m in TOKEN.finditer(buf):
            idx.append(int(m.group(1)))
            lat.append(now_ms - float(m.group(2)))
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
    session: aiohttp.ClientSession, ports: list[int], users: list[dict[str, Any]], concurrency: int = 50
) -> list[aiohttp.ClientWebSocketResponse]:
    """Sockets for every user (spread over `ports` round-robin), `concurrency` handshakes at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, user: dict[str, Any]) -> aiohttp.ClientWebSocketResponse:
        async with gate:
            ws, _, _ = await connect(session, ports[i % len(ports)], user)
            return ws

    return list(await asyncio.gather(*(one(i, u) for i, u in enumerate(users))))


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


async def site_phase(
    sockets: list[aiohttp.ClientWebSocketResponse], *, ramp: float, timeout: float
) -> list[StreamResult]:
    """Every socket sends one message, spread evenly over `ramp` seconds; all replies read to the end."""
    n = len(sockets)

    async def one(i: int, ws: aiohttp.ClientWebSocketResponse) -> StreamResult:
        await asyncio.sleep(ramp * i / n)
        try:
            return await site_stream(ws, timeout)
        except Exception as exc:
            return StreamResult(error=f"{type(exc).__name__}: {exc}")

    return list(await asyncio.gather(*(one(i, ws) for i, ws in enumerate(sockets))))


# -- the floor: the same streams straight from the provider through the openai SDK ---------------
async def direct_stream(client: Any, timeout: float) -> StreamResult:
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
    except Exception as exc:
        result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
    result.seconds = (time.time() * 1000 - t0) / 1000
    return result


async def direct_phase(client: Any, n: int, *, ramp: float, timeout: float) -> list[StreamResult]:
    async def one(i: int) -> StreamResult:
        await asyncio.sleep(ramp * i / n)
        return await direct_stream(client, timeout)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


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
