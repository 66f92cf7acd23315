"""The site's ASGI application with optimizations switched back off, for before/after measurements.

`BENCH_VARIANTS` is a comma-separated list:
- `stock-layer`: Channels' own InMemoryChannelLayer (sweeps expired messages on every send/receive);
- `layer-sweep-only`: our layer with only the throttled sweep (the base class's send/group_send);
- `cleanup-hop`: ChatConsumer dispatches every event through Channels' DB-connection cleanup hop;
- `frame-cleanup-hop`: only the socket's own frames (connect, receive, disconnect) go through it, as
  before a burst of sends was found waiting there (conversations/consumers.py, `frame_cleanup_hop`);
- `channels-dispatch`: the socket's loop over its two sources is Channels' `await_many_dispatch` (a new
  task and an `asyncio.wait` per message), not `consumers.dispatch_many` (one task per source);
- `sdk-parse`: the openai adapter reads the SDK's parsed stream (a pydantic model per chunk);
- `httpx-transport`: the SDK's default httpx2 transport instead of its aiohttp one;
- `sdk-transform`: the history passed as `messages=` (the SDK transforms it per message);
- `whole-history`: requests built from the whole unsummarized history, then fitted (as before
  `recent_turns` read only the newest turns that can fit);
- `pool-db-threads`: the consumer's database calls on the default pool's threads instead of
  Channels' one shared thread (tried, and measured worse: docs/performance.md);
- `stock-redis-layer`: channels-redis's own RedisPubSubChannelLayer (one publish per round trip,
  under the shard lock), not conversations.layers' pipelined one;
- `cache-per-call`: Django's own RedisCache (a new client, pool and connection per async context),
  not django-redis (one connection pool per process);
- `no-direct-deltas`: every delta of this process's reply is queued on its sockets' channels and handled
  by their loops, not handed at once to a socket with nothing queued and nothing in hand
  (conversations/layers/direct.py);
- `no-coalesce`: every queued delta leaves a socket's channel as its own event (not joined with the
  contiguous deltas of the same reply queued behind it: conversations/layers/coalesce.py);
- `send-threads=K`: the socket's `send` stores its message on a pool of K threads of its own instead of
  Channels' one shared database thread (the socket's other database calls stay there);
- `no-read-join`: the openai adapter yields each SSE event's text on its own, even when one read of
  the stream brought several (conversations/llm/openai.py, `JOIN_READS`);
- `sdk-reads`: the openai adapter reads the stream's body through httpx2's byte iterators (four async
  generators a read) instead of aiohttp's reader (conversations/llm/sse.py, `DIRECT_READS`);
- `no-local-relay`: on Redis, every event goes through Redis to this process's own sockets too
  (serialized, published, read back), and deltas are published while no other process listens
  (conversations/layers/redis_pubsub.py, `LOCAL_RELAY`);
- `no-send-build`: a send's reply builds its request on a trip of its own to the database, reading its
  row back, as before the send built it (conversations/generation/reply.py, `BUILD_IN_SEND`);
- `twisted-writes`: daphne's sockets write through Twisted's buffer and the reactor's next turn, not
  at once (chatsite/daphne_writes.py);
- `autobahn-frames`: daphne's text frames go through autobahn's `sendMessage` (argument checks, traffic
  statistics, a debug line's arguments formatted per write), not framed in one step (the same module);
- `switch=SECONDS`: sys.setswitchinterval (how soon a DB thread gets the GIL from a busy event loop);
- `cycles`: a closed socket's objects left in reference cycles for the collector, as autobahn, Twisted's
  HTTP channel and the consumer's dispatch loop leave them (chatsite/daphne_cycles.py);
- `gc0=N`: the youngest generation's collection threshold (700 is Python's default; the site sets
  10,000, chatsite/gc_tuning.py);
- `no-gc-freeze`: the garbage collector walks everything, start-up's objects and the SDK's included
  (chatsite/gc_tuning.py);
- `gc-log=PATH`: the garbage collector's pauses in daphne (count, total, max per generation; each pause
  of 5 ms or more; with BENCH_GC_CENSUS=1 the types walked by each older collection), written to
  PATH.PID as JSON when daphne stops;
- `gc-garbage=PATH`: keep what the collector finds unreachable and write what it is (types, the code
  of its frames, where its exceptions were raised; with BENCH_GC_CYCLES=Type,... the cycle that kept
  one of each) to PATH.PID as JSON, every 3 s after a full collection (diagnostics: it pauses) and at exit;
- `rate-two-trips`: on Redis, a send's rate counter in two round trips (`add`, then django-redis's
  `incr`), as before it took one (conversations/limits.py, `ONE_TRIP`);
- `reply-end-statements`: on PostgreSQL a reply's end is a transaction of three statements (BEGIN, the
  UPDATE, the record's INSERT, the rollup's upsert, COMMIT), as before it became one statement
  (conversations/services.py, `ONE_STATEMENT_END`);
- `send-link-statements`: on PostgreSQL a send links its two rows and updates its thread in two
  statements, as before they became one (conversations/services.py, `ONE_STATEMENT_SEND`);
- `aiohttp-read-timer`: the openai adapter's stream request keeps the SDK's read timeout, so aiohttp sets
  and cancels a timer on every read of the body, instead of one lazily re-armed guard for the stream
  (conversations/llm/openai.py, `GUARD_READS`);
- `eager-sdk-types`: the OpenAI SDK's type packages run their `__init__` as they are imported, all 541
  modules at once, instead of when a name is first asked of them (conversations/llm/deferred_types.py;
  it sets `CHAT_DEFER_SDK_TYPES=0` before the site is imported);
- `sdk-import-on-loop`: a provider's adapter and SDK are imported on the event loop at the first reply
  that needs them (holding every socket of the process meanwhile), not on a thread of their own
  (conversations/llm/__init__.py, `IMPORT_ON_THREAD`);
- `anthropic-sdk-stream`: the anthropic adapter reads the SDK's parsed stream (a model per event, over
  httpx2's own transport) instead of raw SSE lines over aiohttp (conversations/llm/anthropic.py,
  `RAW_READS`; for runs with `--provider anthropic`);
- `stock-daphne`: daphne started as `python -m daphne`, loading Twisted's TLS and autobahn's WAMP client
  (cryptography's Rust bindings with them), instead of as the site starts it (`python -m chatsite.serve`);
- `uvloop`: daphne on uvloop instead of asyncio's own loop (started as `python -m bench.uvloop_daphne`;
  tried and left off: docs/performance.md);
- `profile=PATH`: cProfile the event loop thread, written to PATH when daphne stops.
Only the benchmark uses this module (`daphne bench.variants:application`).
"""

from __future__ import annotations

import atexit
import cProfile
import importlib
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if "eager-sdk-types" in os.environ.get("BENCH_VARIANTS", "").split(","):
    os.environ["CHAT_DEFER_SDK_TYPES"] = "0"  # read as conversations.llm is first imported, just below

from chatsite.asgi import application as site_application  # noqa: E402
from conversations.consumers import ChatConsumer  # noqa: E402
from conversations.llm.base import ChatRequest, ProviderError, Usage  # noqa: E402

if TYPE_CHECKING:
    # Imported by the variants that need it, below: the SDK loads on the first reply, as on the site.
    from conversations.llm.openai import OpenAIProvider

VARIANTS = [v.strip() for v in os.environ.get("BENCH_VARIANTS", "").split(",") if v.strip()]


async def sdk_parsed_stream(self: OpenAIProvider, request: ChatRequest) -> AsyncIterator[str | Usage]:
    """The adapter as it was before the raw-SSE change: the SDK's parsed chunks."""
    from conversations.llm.openai import map_error

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
            model=request.model, messages=messages, stream=True, stream_options={"include_usage": True}, **kwargs
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
    except Exception as exc:
        raise map_error(exc) from exc
    yield usage


def _start_profile(path: str) -> None:
    # CPU time of the event-loop thread, not wall time: on 2 busy cores wall time mostly measures preemption.
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()

    def dump() -> None:
        profiler.disable()
        profiler.dump_stats(path)

    atexit.register(dump)


def _gc_garbage(path_out: str) -> None:
    """Keep what the collector finds unreachable (DEBUG_SAVEALL) and write what it is: counts by type, the
    code of the frames among it, where its exceptions were raised, and (for the types named in
    BENCH_GC_CYCLES) the cycle that kept one of each. Written every 3 s after a full collection of its own
    (a pause: for finding garbage, not for timing runs) and when daphne stops."""
    import collections
    import gc
    import json
    import types

    gc.set_debug(gc.DEBUG_SAVEALL)

    def dump() -> None:
        gc.collect()
        garbage = list(gc.garbage)
        kinds = collections.Counter(type(o).__qualname__ for o in garbage)
        frames = collections.Counter(
            f"{o.f_code.co_filename.rsplit('site-packages/', 1)[-1]}:{o.f_code.co_name}"
            for o in garbage
            if type(o) is types.FrameType
        )
        excs: collections.Counter[str] = collections.Counter()
        for o in garbage:
            if issubclass(type(o), BaseException):  # not isinstance: a lazy object would set itself up
                tb, chain = o.__traceback__, []
                while tb is not None:
                    chain.append(f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_frame.f_code.co_name}")
                    tb = tb.tb_next
                where = " > ".join(chain[:3] + ["..."] + chain[-2:] if len(chain) > 5 else chain) or "no traceback"
                excs[f"{type(o).__name__} at {where}"] += 1
        cycles = {}
        ids = {id(o) for o in garbage}
        for kind in os.environ.get("BENCH_GC_CYCLES", "").split(","):
            start = next((o for o in garbage if type(o).__qualname__ == kind), None)
            if start is None:
                continue
            # The shortest way back to `start` through the garbage's references: the cycle that keeps it.
            seen, queue, found = {id(start): None}, [start], None
            while queue and found is None:
                nxt = []
                for o in queue:
                    for r in gc.get_referents(o):
                        if r is start:
                            found = o
                            break
                        if id(r) in ids and id(r) not in seen:
                            seen[id(r)] = o
                            nxt.append(r)
                    if found is not None:
                        break
                queue = nxt
            path, o = [], found
            while o is not None:
                label = type(o).__qualname__
                parent = seen.get(id(o))
                if type(parent) is dict:
                    label += " (key " + ", ".join(repr(k) for k, v in parent.items() if v is o)[:60] + ")"
                path.append(label)
                o = parent
            cycles[kind] = list(reversed(path))
        target = f"{path_out}.{os.getpid()}"
        with open(f"{target}.tmp", "w") as out:
            json.dump(
                {
                    "cycles": cycles,
                    "objects": len(garbage),
                    "kinds": kinds.most_common(60),
                    "frames": frames.most_common(40),
                    "exceptions": excs.most_common(25),
                },
                out,
                indent=1,
            )
        os.replace(f"{target}.tmp", target)  # whole: a reader never sees a summary half-written

    def every(seconds: float) -> None:
        while True:
            time.sleep(seconds)
            try:
                dump()
            except Exception as exc:  # a summary that fails says so, and the next one is tried
                print(f"gc-garbage: could not write the summary: {exc!r}", flush=True)

    # Written every 3 s as well: at exit, summing up a long run's garbage can outlast the stop's timeout.
    threading.Thread(target=every, args=(3,), daemon=True).start()
    atexit.register(dump)


def _log_gc(path: str) -> None:
    import gc
    import json

    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]

    census: list[Any] = []
    long: list[Any] = []

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            if info["generation"] >= 1 and os.environ.get("BENCH_GC_CENSUS"):
                import collections

                objs = gc.get_objects(info["generation"])
                kinds = collections.Counter(type(o).__qualname__ for o in objs).most_common(25)
                census.append((info["generation"], len(objs), kinds))
                del objs
            started[0] = time.perf_counter()
        else:
            ms = (time.perf_counter() - started[0]) * 1000
            pauses[info["generation"]].append(ms)
            if ms >= 5:
                long.append((round(time.time(), 2), info["generation"], round(ms, 1), info["collected"]))

    gc.callbacks.append(timed)

    def dump() -> None:
        summary = {
            gen: {"count": len(p), "total_ms": round(sum(p), 1), "max_ms": round(max(p, default=0), 2)}
            for gen, p in pauses.items()
        }
        with open(f"{path}.{os.getpid()}", "w") as out:
            json.dump(summary, out)
            out.write("\n" + json.dumps(long) + "\n" + json.dumps(census))

    atexit.register(dump)


async def sdk_transformed_stream(self: OpenAIProvider, request: ChatRequest) -> AsyncIterator[str | Usage]:
    """The raw-SSE adapter, with the history passed as `messages=` through the SDK's transform."""
    streaming = self.client.chat.completions.with_streaming_response  # cached per client
    if not getattr(streaming, "bench_transform", False):
        original = streaming.create

        def create(**kwargs: Any) -> Any:
            kwargs["messages"] = kwargs.pop("extra_body")["messages"]
            return original(**kwargs)

        streaming.create = create  # type: ignore[method-assign]
        streaming.bench_transform = True  # type: ignore[attr-defined]
    async for item in ADAPTER_STREAM(self, request):
        yield item


ADAPTER_STREAM: Any = None  # the adapter's own `stream`, kept by the `sdk-transform` variant


def build_from_whole_history(reply_id: int) -> Any:
    """history.build_for_reply as it was: every unsummarized turn read, then the newest fitted."""
    from conversations import history, selectors

    original = selectors.recent_turns

    def everything(conversation: Any, *, before_id: int, tokens: int, at_least: int = 1) -> list[Any]:
        return selectors.history_turns(conversation, before_id=before_id)

    history.recent_turns = everything  # type: ignore[assignment]
    try:
        return BUILD_FOR_REPLY(reply_id)
    finally:
        history.recent_turns = original  # type: ignore[assignment]


BUILD_FOR_REPLY: Any = None


def sends_on_own_threads(threads: int) -> None:
    """The socket's `send` stores on a pool of its own (the `send-threads=K` variant)."""
    import asyncio
    import functools
    from concurrent.futures import ThreadPoolExecutor

    from django.db import close_old_connections

    from conversations import consumers

    pool = ThreadPoolExecutor(threads, thread_name_prefix="send")
    store = consumers._send.func  # type: ignore[attr-defined]

    def stored(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        return store(*args, **kwargs)

    async def send(*args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(stored, *args, **kwargs))

    consumers._send = send  # type: ignore[assignment]


# The variants that set one module-level switch of the site off: name -> (module, switch).
SWITCHED_OFF = {
    "no-read-join": ("conversations.llm.openai", "JOIN_READS"),
    "rate-two-trips": ("conversations.limits", "ONE_TRIP"),
    "sdk-reads": ("conversations.llm.sse", "DIRECT_READS"),
    "no-coalesce": ("conversations.layers.coalesce", "ENABLED"),
    "no-local-relay": ("conversations.layers.redis_pubsub", "LOCAL_RELAY"),
    "no-send-build": ("conversations.generation.reply", "BUILD_IN_SEND"),
    "reply-end-statements": ("conversations.services", "ONE_STATEMENT_END"),
    "send-link-statements": ("conversations.services", "ONE_STATEMENT_SEND"),
    "aiohttp-read-timer": ("conversations.llm.openai", "GUARD_READS"),
    "sdk-import-on-loop": ("conversations.llm", "IMPORT_ON_THREAD"),
    "anthropic-sdk-stream": ("conversations.llm.anthropic", "RAW_READS"),
}

for variant in VARIANTS:
    if variant == "stock-layer":
        from django.conf import settings

        # The layer is built on first use, so changing the backend here is in time.
        settings.CHANNEL_LAYERS["default"]["BACKEND"] = "channels.layers.InMemoryChannelLayer"
    elif variant == "twisted-writes":
        from chatsite import daphne_writes

        daphne_writes.uninstall()
    elif variant == "cycles":
        from chatsite import daphne_cycles
        from conversations import consumers

        daphne_cycles.uninstall()
        consumers.BREAK_CYCLES = False
    elif variant.startswith("gc0="):
        import gc

        gc.set_threshold(int(variant.split("=", 1)[1]), *gc.get_threshold()[1:])
    elif variant == "autobahn-frames":
        from chatsite import daphne_writes

        daphne_writes.uninstall_frames()
    elif variant == "layer-sweep-only":
        from channels.layers import InMemoryChannelLayer as StockLayer

        from conversations.layers import InMemoryChannelLayer

        InMemoryChannelLayer.send = StockLayer.send  # type: ignore[method-assign]
        InMemoryChannelLayer.group_send = StockLayer.group_send  # type: ignore[method-assign]
    elif variant == "cleanup-hop":
        if "dispatch" in ChatConsumer.__dict__:
            del ChatConsumer.dispatch
    elif variant == "channels-dispatch":
        ChatConsumer.channels_dispatch = True
    elif variant == "no-direct-deltas":
        ChatConsumer.direct_deltas = False
    elif variant == "frame-cleanup-hop":
        ChatConsumer.frame_cleanup_hop = True
    elif variant == "sdk-parse":
        from conversations.llm.openai import OpenAIProvider

        OpenAIProvider.stream = sdk_parsed_stream  # type: ignore[method-assign]
    elif variant == "httpx-transport":
        import openai

        from conversations.llm.openai import OpenAIProvider

        # The SDK's default transport (httpx2, httpcore, h11, anyio) instead of its aiohttp one.
        OpenAIProvider.http_client = staticmethod(openai.DefaultAsyncHttpxClient)  # type: ignore[method-assign,assignment]
    elif variant == "sdk-transform":
        from conversations.llm.openai import OpenAIProvider

        ADAPTER_STREAM = OpenAIProvider.stream
        OpenAIProvider.stream = sdk_transformed_stream  # type: ignore[method-assign]
    elif variant == "whole-history":
        from conversations import history
        from conversations.generation import reply

        BUILD_FOR_REPLY = history.build_for_reply
        reply.build_for_reply = build_from_whole_history  # type: ignore[assignment]
    elif variant == "pool-db-threads":
        from asgiref.sync import sync_to_async
        from django.db import close_old_connections

        from conversations import consumers

        def on_pool(function: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                close_old_connections()
                return function(*args, **kwargs)

            return sync_to_async(call, thread_sensitive=False)

        for name in ("_conversation", "_send", "_regenerate", "_streaming", "_message"):
            setattr(consumers, name, on_pool(getattr(consumers, name).func))
    elif variant == "stock-redis-layer":
        from django.conf import settings

        if settings.CHANNEL_LAYERS["default"]["BACKEND"] == "conversations.layers.RedisPubSubChannelLayer":
            settings.CHANNEL_LAYERS["default"]["BACKEND"] = "channels_redis.pubsub.RedisPubSubChannelLayer"
    elif variant == "cache-per-call":
        from django.conf import settings

        if settings.CACHES["default"]["BACKEND"] == "django_redis.cache.RedisCache":
            settings.CACHES["default"]["BACKEND"] = "django.core.cache.backends.redis.RedisCache"
    elif variant.startswith("send-threads="):
        sends_on_own_threads(int(variant.split("=", 1)[1]))
    elif variant.startswith("switch="):
        import sys

        sys.setswitchinterval(float(variant.split("=", 1)[1]))
    elif variant == "no-gc-freeze":
        import gc

        from chatsite import gc_tuning

        gc_tuning.ENABLED = False
        gc.unfreeze()
    elif variant.startswith("gc-log="):
        _log_gc(variant.split("=", 1)[1])
    elif variant.startswith("gc-garbage="):
        _gc_garbage(variant.split("=", 1)[1])
    elif variant == "eager-sdk-types":
        pass  # set before the site was imported (above)
    elif variant in ("uvloop", "stock-daphne"):
        pass  # chosen before daphne started (bench/procs.py, bench/uvloop_daphne.py)
    elif variant in SWITCHED_OFF:
        module, switch = SWITCHED_OFF[variant]
        switched = importlib.import_module(module)
        if getattr(switched, switch, None) is not True:
            raise SystemExit(f"{variant}: {module}.{switch} is not a switch that is on")
        setattr(switched, switch, False)
    elif variant.startswith("profile="):
        _start_profile(variant.split("=", 1)[1])
    else:
        raise SystemExit(f"unknown BENCH_VARIANTS entry {variant!r}")

application = site_application
