"""A fake OpenAI / Anthropic streaming server for tests and benchmarks.

Speaks the real wire formats (Chat Completions SSE, Messages SSE, each provider's error bodies) on
loopback so the real SDKs can be driven without network access. One asyncio loop in a background
thread serves every connection, so hundreds of slow streams cost only sockets and coroutines.

    with FakeProvider(Reply(text="hi there")) as p:
        client = openai.AsyncOpenAI(api_key="x", base_url=p.openai_base_url)

Prompt caching follows the providers' published rules, counting a word as a token: OpenAI caches
automatically, per `prompt_cache_key`, prompts of 1,024 tokens and more, and reports the longest
prefix seen before in 128-token steps (`prompt_tokens_details.cached_tokens`); Anthropic caches the
prefix up to each `cache_control` breakpoint (at least 1,024 tokens), reporting a later request's hit
as `cache_read_input_tokens` and what it wrote as `cache_creation_input_tokens`. `GET /v1/models`
lists `openai_models` or (with an `anthropic-version` header) `anthropic_models`.

Standalone: ``python -m tests.fakes.provider --port 8765 [--text T] [--token-delay S] [--stamp N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

DEFAULT_ERROR_MESSAGE = "fake provider error"

# Anthropic error type per HTTP status (the default when Reply.error_type is None).
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Callers may name an error in either provider's vocabulary; normalise to Anthropic's types.
_TO_ANTHROPIC = {
    "rate_limit_exceeded": "rate_limit_error",
    "invalid_api_key": "authentication_error",
    "context_length_exceeded": "invalid_request_error",
    "server_error": "api_error",
}
# Error type (either vocabulary) -> OpenAI (type, code, param), as api.openai.com sends them.
_OPENAI_ERROR = {
    "rate_limit_error": ("requests", "rate_limit_exceeded", None),
    "authentication_error": ("invalid_request_error", "invalid_api_key", None),
    "context_length_exceeded": ("invalid_request_error", "context_length_exceeded", "messages"),
    "invalid_request_error": ("invalid_request_error", None, None),
    "not_found_error": ("invalid_request_error", None, None),
    "billing_error": ("insufficient_quota", "insufficient_quota", None),
    "api_error": ("server_error", None, None),
    "overloaded_error": ("server_error", None, None),
    "timeout_error": ("server_error", None, None),
}


# Seconds between the last chunk before a drop and the drop itself.
DROP_GRACE = 0.2
# The providers' prompt-cache rules: the shortest prefix cached, and OpenAI's step above it.
CACHE_MIN_TOKENS = 1024
OPENAI_CACHE_STEP = 128
# Anthropic looks this many blocks back from a breakpoint for an earlier cached prefix.
ANTHROPIC_LOOKBACK = 20


@dataclass
class Reply:
    """What the fake provider does for one request (either endpoint, streaming or not)."""

    text: str = "Hello from the fake provider."
    chunks: list[str] | None = None  # explicit chunking; default: words keeping leading whitespace
    token_delay: float = 0.0  # seconds between chunks
    first_token_delay: float = 0.0  # seconds before the first chunk, after the headers
    headers_delay: float = 0.0  # seconds before the headers: the request taken, then silence
    status: int = 200  # non-2xx: that status with the provider's own error body, no stream
    error_type: str | None = None  # either vocabulary: "rate_limit_error", "context_length_exceeded", ...
    error_message: str = DEFAULT_ERROR_MESSAGE
    retry_after: float | None = None  # Retry-After header (seconds) on an error response
    drop_after: int | None = None  # after N chunks, abort the TCP connection mid-response
    hang_after: int | None = None  # after N chunks, send nothing more until stop() or the client leaves
    stream_error_after: int | None = None  # after N chunks, the provider's in-stream error, then end
    end_after: int | None = None  # after N chunks, end the body cleanly with no final events (a cut proxy)
    input_tokens: int | None = None  # default: words in the request's messages and system
    output_tokens: int | None = None  # default: chunks sent
    stamp: int | None = None  # send N chunks "<i@ms-since-epoch> ", stamped as each is written
    cached_input_tokens: int | None = None  # default: by the provider's cache rules (see the module doc)
    cache_write_tokens: int | None = None  # Anthropic only; default: by its cache rules

    def pieces(self) -> list[str]:
        """The content chunks (stamp mode aside): explicit chunks, or words keeping leading whitespace."""
        if self.chunks is not None:
            return list(self.chunks)
        # `|\s+` keeps trailing whitespace too, so "".join(pieces) == text always holds.
        return re.findall(r"\s*\S+|\s+", self.text)

    def count(self) -> int:
        return self.stamp if self.stamp is not None else len(self.pieces())

    def chunk(self, i: int, pieces: list[str]) -> str:
        """Chunk i; a stamp chunk reads the clock now, so call this right before writing it."""
        return f"<{i}@{time.time() * 1000:.3f}> " if self.stamp is not None else pieces[i]

    def cut(self) -> tuple[str, int] | None:
        """The earliest of drop/hang/stream_error/end as (kind, after_n_chunks), or None."""
        cuts = [
            (self.drop_after, "drop"),
            (self.hang_after, "hang"),
            (self.stream_error_after, "error"),
            (self.end_after, "end"),
        ]
        n, kind = min(((n, k) for n, k in cuts if n is not None), default=(None, ""))
        return (kind, n) if n is not None else None


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    json: dict


MAX_REQUEST_BYTES = 32 * 1024 * 1024


class FakeProvider:
    """An aiohttp server on its own loop/thread serving /v1/chat/completions and /v1/messages."""

    def __init__(self, default: Reply | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.default = default or Reply()
        self.host, self.port = host, port
        self.requests: list[RecordedRequest] = []
        self.openai_models = ["gpt-4o-mini", "gpt-4.1"]
        self.anthropic_models = [("claude-haiku-4-5", "Claude Haiku 4.5"), ("claude-sonnet-4-5", "Claude Sonnet 4.5")]
        self.cache = PromptCache()
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.ServerRunner | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def script(self, *replies: Reply) -> None:
        """Queue replies, consumed one per request (either endpoint) before falling back to `default`."""
        with self._lock:
            self._script.extend(replies)

    def clear(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()
            self.cache = PromptCache()

    def start(self) -> FakeProvider:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # e.g. port in use: re-raised in the starting thread
                failure.append(exc)
            ready.set()
            if not failure:
                loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-provider", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        # handler_cancellation: a client that goes away cancels its handler, so hung streams don't leak.
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        # A deep backlog so a burst of 500+ simultaneous connects isn't throttled by SYN retries.
        await web.TCPSite(self._runner, self.host, self.port, backlog=2048).start()
        self.port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        assert self._stopping is not None and self._runner is not None
        self._stopping.set()  # hung streams wake up and abort their connections
        await self._runner.cleanup()

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        # Bodies as large as the real APIs take (Anthropic: 32 MB a request), not aiohttp's 1 MB default:
        # a request with images is several megabytes.
        request = request.clone(client_max_size=MAX_REQUEST_BYTES)
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            body = None
        # Lower-cased names: HTTP headers are case-insensitive, so tests needn't guess each SDK's casing.
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self.requests.append(RecordedRequest(request.path, headers, body if isinstance(body, dict) else {}))
        anthropic = request.path == "/v1/messages"
        if request.method == "GET" and request.path == "/v1/models":
            return self._models("anthropic-version" in headers)
        if request.method != "POST" or not (anthropic or request.path == "/v1/chat/completions"):
            style = "anthropic-version" in headers
            return _error(style, 404, "not_found_error", f"Invalid URL ({request.method} {request.path})")
        if not isinstance(body, dict):
            return _error(anthropic, 400, "invalid_request_error", "We could not parse the JSON body.")
        reply = self._next_reply()
        if reply.status >= 300:
            kind = reply.error_type or _TYPE_BY_STATUS.get(reply.status, "api_error")
            if reply.status < 500 and kind == "api_error":
                kind = "invalid_request_error"
            return _error(anthropic, reply.status, kind, reply.error_message, reply.retry_after, body)
        tokens_in = reply.input_tokens
        if tokens_in is None:
            tokens_in = max(1, _word_count(body.get("messages")) + _word_count(body.get("system")))
        with self._lock:
            cached, written = self.cache.lookup(body, anthropic)
        if reply.cached_input_tokens is not None:
            cached = reply.cached_input_tokens
        if reply.cache_write_tokens is not None:
            written = reply.cache_write_tokens
        usage_in = (tokens_in, min(cached, tokens_in), min(written, max(0, tokens_in - cached)) if anthropic else 0)
        if reply.headers_delay:
            await asyncio.sleep(reply.headers_delay)
        if not body.get("stream"):
            return await self._complete(request, reply, body, anthropic, usage_in)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        resp.headers["cache-control"] = "no-cache"
        resp.headers["request-id" if anthropic else "x-request-id"] = _req_id()
        await resp.prepare(request)  # headers go out now, before any first_token_delay
        try:
            if anthropic:
                await self._stream_anthropic(request, resp, reply, body, usage_in)
            else:
                await self._stream_openai(request, resp, reply, body, usage_in)
        except ConnectionError:  # the client went away mid-stream: nothing left to send to
            pass
        return resp

    def _models(self, anthropic: bool) -> web.Response:
        """The model list, in the provider's own format."""
        if anthropic:
            data = [
                {"type": "model", "id": m, "display_name": label, "created_at": "2025-10-01T00:00:00Z"}
                for m, label in self.anthropic_models
            ]
            first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
            return _json(True, {"data": data, "has_more": False, "first_id": first, "last_id": last})
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in self.openai_models]
        return _json(False, {"object": "list", "data": data})

    async def _complete(
        self, request: web.BaseRequest, reply: Reply, body: dict, anthropic: bool, tokens_in: tuple[int, int, int]
    ) -> web.StreamResponse:
        """Non-streaming: the same delays in total, then one JSON body; a cut becomes its HTTP analogue."""
        n = reply.count()
        await asyncio.sleep(reply.first_token_delay + reply.token_delay * max(0, n - 1))
        cut = reply.cut()
        if cut and cut[0] != "error":
            await (self._drop(request) if cut[0] == "drop" else self._hang(request))
            return web.Response(status=500)  # never reaches the client: the connection is gone
        if cut:  # per Anthropic's docs an in-stream overloaded_error is a 529 when not streaming
            kind = reply.error_type or "overloaded_error"
            return _error(anthropic, 529 if anthropic else 500, kind, reply.error_message, reply.retry_after, body)
        pieces = reply.pieces() if reply.stamp is None else []
        text = "".join(reply.chunk(i, pieces) for i in range(n))
        tokens_out = reply.output_tokens if reply.output_tokens is not None else n
        if anthropic:
            return _json(True, _message(body, [{"type": "text", "text": text}], "end_turn", tokens_in, tokens_out))
        choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []}}
        completion = _completion_base(body, "chat.completion")
        completion["choices"] = [{**choice, "logprobs": None, "finish_reason": "stop"}]
        return _json(False, {**completion, "usage": _openai_usage(tokens_in, tokens_out)})

    async def _write_chunks(
        self, request: web.BaseRequest, resp: web.StreamResponse, reply: Reply, frame: Callable[[str], bytes]
    ) -> tuple[str | None, int]:
        """Write content chunks framed by `frame`, then act on any cut; return (cut kind, chunks sent)."""
        cut = reply.cut()
        pieces = reply.pieces() if reply.stamp is None else []
        sent = min(reply.count(), cut[1]) if cut else reply.count()
        for i in range(sent):
            delay = reply.first_token_delay if i == 0 else reply.token_delay
            if delay > 0:
                await asyncio.sleep(delay)
            await resp.write(frame(reply.chunk(i, pieces)))
        if cut and cut[0] == "drop":
            await self._drop(request)
        elif cut and cut[0] == "hang":
            await self._hang(request)
        return (cut[0] if cut else None), sent

    async def _stream_openai(
        self, request: web.BaseRequest, resp: web.StreamResponse, reply: Reply, body: dict, tokens_in: tuple
    ) -> None:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = _completion_base(body, "chat.completion.chunk")
        if include_usage:  # the API puts `usage: null` on every chunk only when usage was requested
            base["usage"] = None

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return f"data: {_dumps({**base, 'choices': [choice]})}\n\n".encode()

        await resp.write(chunk({"role": "assistant", "content": "", "refusal": None}))
        kind, sent = await self._write_chunks(request, resp, reply, lambda text: chunk({"content": text}))
        if kind == "error":  # no [DONE]: the stream just ends after the error line
            error = _error_body(False, reply.error_type or "overloaded_error", reply.error_message, body)
            await resp.write(f"data: {_dumps(error)}\n\n".encode())
        elif kind is None:
            tail = chunk({}, "stop")
            if include_usage:
                tokens_out = reply.output_tokens if reply.output_tokens is not None else sent
                usage = {**base, "choices": [], "usage": _openai_usage(tokens_in, tokens_out)}
                tail += f"data: {_dumps(usage)}\n\n".encode()
            await resp.write(tail + b"data: [DONE]\n\n")

    async def _stream_anthropic(
        self, request: web.BaseRequest, resp: web.StreamResponse, reply: Reply, body: dict, tokens_in: tuple
    ) -> None:
        def event(name: str, **data: Any) -> bytes:
            return f"event: {name}\ndata: {_dumps({'type': name, **data})}\n\n".encode()

        start = _message(body, [], None, tokens_in, 1)  # the real API reports output_tokens=1 here
        block = {"type": "text", "text": ""}
        await resp.write(
            event("message_start", message=start)
            + event("content_block_start", index=0, content_block=block)
            + event("ping")
        )

        def delta(text: str) -> bytes:
            return event("content_block_delta", index=0, delta={"type": "text_delta", "text": text})

        kind, sent = await self._write_chunks(request, resp, reply, delta)
        if kind == "error":  # no message_stop: the stream just ends after the error event
            error = _error_body(True, reply.error_type or "overloaded_error", reply.error_message, body)
            await resp.write(f"event: error\ndata: {_dumps(error)}\n\n".encode())
        elif kind is None:
            tokens_out = reply.output_tokens if reply.output_tokens is not None else sent
            stop = {"stop_reason": "end_turn", "stop_sequence": None}
            await resp.write(
                event("content_block_stop", index=0)
                + event("message_delta", delta=stop, usage={"output_tokens": tokens_out})
                + event("message_stop")
            )

    async def _drop(self, request: web.BaseRequest) -> None:
        """Cut the TCP connection with the response unfinished (no last chunk, no final events).

        Closed, not reset: an RST can make the client's kernel discard chunks it has received but
        the client has not read yet, so "the first N chunks, then a drop" would sometimes deliver
        fewer. A close after the data delivers exactly N, then the body ends mid-chunked-transfer,
        which both SDKs' transports report as a broken connection.
        """
        transport = request.transport
        if transport is None:
            return
        # Let what was written reach the socket first, so the client really receives the N chunks,
        # and give the client a moment to read them: aiohttp's reader raises a broken body's error
        # ahead of data it has buffered but not yet handed out, so a close that arrives in the same
        # moment as the last chunk can swallow that chunk (a CI run on PostgreSQL saw 3 of 4).
        while transport.get_write_buffer_size() and not transport.is_closing():
            await asyncio.sleep(0.001)
        await asyncio.sleep(DROP_GRACE)
        transport.close()

    async def _hang(self, request: web.BaseRequest) -> None:
        """Send nothing more until the server stops (a client disconnect cancels this handler)."""
        assert self._stopping is not None
        await self._stopping.wait()
        await self._drop(request)


class PromptCache:
    """The providers' prompt caches, by their published rules, counting a word as a token."""

    def __init__(self) -> None:
        self.openai: dict[str, list[list[str]]] = {}  # prompt_cache_key -> token sequences seen
        self.anthropic: set[str] = set()  # hashes of cached prefixes (through a breakpoint)

    def lookup(self, body: dict, anthropic: bool) -> tuple[int, int]:
        """(tokens read from the cache, tokens written to it) for this request; remembers it."""
        return self._anthropic(body) if anthropic else self._openai(body)

    def _openai(self, body: dict) -> tuple[int, int]:
        tokens: list[str] = []
        for m in body.get("messages") or []:
            if isinstance(m, dict):
                tokens.append(f"\x00{m.get('role')}")  # a message boundary: part of the prefix, not a token
                tokens.extend(_words(m.get("content")))
        seen = self.openai.setdefault(str(body.get("prompt_cache_key") or ""), [])
        total = sum(1 for t in tokens if not t.startswith("\x00"))
        matched = 0
        for old in seen:
            common = 0
            for a, b in zip(old, tokens, strict=False):
                if a != b:
                    break
                common += 1
            matched = max(matched, sum(1 for t in tokens[:common] if not t.startswith("\x00")))
        seen.append(tokens)
        del seen[:-64]
        if total < CACHE_MIN_TOKENS or matched < CACHE_MIN_TOKENS:
            return 0, 0
        return CACHE_MIN_TOKENS + (matched - CACHE_MIN_TOKENS) // OPENAI_CACHE_STEP * OPENAI_CACHE_STEP, 0

    def _anthropic(self, body: dict) -> tuple[int, int]:
        blocks: list[tuple[str, int, bool]] = []  # (prefix hash through the block, tokens through it, breakpoint)
        digest = hashlib.sha256(str(body.get("model")).encode())
        count = 0

        def add(role: str, block: Any) -> None:
            nonlocal count
            text = block.get("text") if isinstance(block, dict) else block
            digest.update(json.dumps([role, text]).encode())
            count += len(_words(text))
            marked = isinstance(block, dict) and bool(block.get("cache_control"))
            blocks.append((digest.hexdigest(), count, marked))

        system = body.get("system")
        for block in [system] if isinstance(system, str) else system or []:
            add("system", block)
        for m in body.get("messages") or []:
            content = m.get("content") if isinstance(m, dict) else None
            for block in [content] if isinstance(content, str) else content or []:
                add(str(m.get("role")), block)
        marks = [i for i, (_, _, marked) in enumerate(blocks) if marked]
        if not marks:
            return 0, 0
        read = 0
        for mark in marks:
            for i in range(mark, max(-1, mark - ANTHROPIC_LOOKBACK), -1):
                if blocks[i][0] in self.anthropic:
                    read = max(read, blocks[i][1])
                    break
        written = 0
        for mark in marks:
            key, through, _ = blocks[mark]
            if through >= CACHE_MIN_TOKENS and key not in self.anthropic:
                self.anthropic.add(key)
                written = max(written, through - read)
        return read, written


def _words(value: Any) -> list[str]:
    """The words of a message's content (a string or a list of text blocks)."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [w for v in value for w in _words(v.get("text") if isinstance(v, dict) else v)]
    return []


def _word_count(value: Any) -> int:
    """Rough token count of messages/system: words in every text part (str or [{"text": ...}])."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_word_count(v) for v in value)
    if isinstance(value, dict):
        return _word_count(value.get("content")) + _word_count(value.get("text"))
    return 0


def _error_body(anthropic: bool, error_type: str, message: str, body: dict) -> dict:
    if message == DEFAULT_ERROR_MESSAGE and error_type == "context_length_exceeded":
        # Callers detect context overflow by these phrases, so use the providers' real wording.
        n = _word_count(body.get("messages"))
        if anthropic:
            message = f"prompt is too long: {n} tokens > 200000 maximum"
        else:
            message = (
                f"This model's maximum context length is 128000 tokens. However, your messages resulted in {n} "
                "tokens. Please reduce the length of the messages."
            )
    if anthropic:
        error = {"type": _TO_ANTHROPIC.get(error_type, error_type), "message": message}
        return {"type": "error", "error": error, "request_id": _req_id()}
    fallback = _OPENAI_ERROR.get(_TO_ANTHROPIC.get(error_type, ""), (error_type, error_type, None))
    kind, code, param = _OPENAI_ERROR.get(error_type, fallback)
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(
    anthropic: bool, status: int, error_type: str, message: str, retry_after: float | None = None, body: Any = None
) -> web.Response:
    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
    payload = _error_body(anthropic, error_type, message, body if isinstance(body, dict) else {})
    return _json(anthropic, payload, status, headers)


def _json(anthropic: bool, payload: dict, status: int = 200, headers: dict | None = None) -> web.Response:
    headers = {**(headers or {}), ("request-id" if anthropic else "x-request-id"): _req_id()}
    return web.Response(text=_dumps(payload), status=status, content_type="application/json", headers=headers)


def _message(body: dict, content: list, stop: str | None, tokens_in: tuple[int, int, int], tokens_out: int) -> dict:
    """An Anthropic Message object (complete, or empty for message_start); `tokens_in`: (all, read, written)."""
    total, read, written = tokens_in
    usage = {"input_tokens": total - read - written, "output_tokens": tokens_out}
    usage |= {"cache_creation_input_tokens": written, "cache_read_input_tokens": read}
    return {
        **{"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "content": content},
        **{"model": body.get("model", "fake-model"), "stop_reason": stop, "stop_sequence": None, "usage": usage},
    }


def _completion_base(body: dict, obj: str) -> dict:
    """Fields shared by every chunk of one OpenAI completion (and by the non-streaming object)."""
    return {
        **{"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": obj, "created": int(time.time())},
        **{"model": body.get("model", "fake-model"), "service_tier": "default", "system_fingerprint": "fp_fake"},
    }


def _openai_usage(prompt_in: tuple[int, int, int], completion: int) -> dict:
    prompt, cached, _ = prompt_in
    details = {"accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    return {
        **{"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, **details},
    }


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _req_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the fake OpenAI/Anthropic provider until interrupted.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--text", default=Reply.text)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--stamp", type=int, default=None, help="send N time-stamped chunks instead of --text")
    args = parser.parse_args(argv)
    reply = Reply(args.text, token_delay=args.token_delay, first_token_delay=args.first_token_delay, stamp=args.stamp)
    provider = FakeProvider(reply, host=args.host, port=args.port).start()
    print(f"fake provider on {provider.url}", flush=True)
    print(f"  OpenAI:    base_url={provider.openai_base_url}  (POST /v1/chat/completions)", flush=True)
    print(f"  Anthropic: base_url={provider.anthropic_base_url}  (POST /v1/messages)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        provider.stop()


if __name__ == "__main__":
    main()
