"""Where a send's time goes before its first token, and how long the event loop is held: for the benchmark.

Off unless `CHAT_STAGE_TIMING` is set (then each reply logs one `stage-timing {json}` line at its first
token; `bench/` sets it and reads the lines from daphne's log). The stages, in order:

- `received`: the `send` frame reached the socket's handler;
- `db_start`: the socket's database thread began storing it (the wait before is the queue for it);
- `stored`: the message and its reply's row are committed;
- `request`: the provider request is built (history read, summary, attachments): by the send, in the
  same trip to the database thread, or after `task` where the reply builds its own (a path with
  files, the benchmark's `no-send-build`);
- `task`: the reply's task began running;
- `provider`: the provider call began (the HTTP request goes out);
- `first_token`: the provider's first text arrived, parsed;
- `published`: that first delta was handed to the channel layer.

Each is seconds since `received`, from one monotonic clock in one process.

The loop-lag probe (`CHAT_LOOP_LAG`, below) is separate: stage timing is per send, loop lag per
process, and either can be on without the other.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

log = logging.getLogger(__name__)

Marks = dict[str, float]


def enabled() -> bool:
    return bool(os.environ.get("CHAT_STAGE_TIMING"))


def begin() -> Marks | None:
    """Marks for a new send, starting at `received`; None (and every call below a no-op) when off."""
    return {"received": time.perf_counter()} if enabled() else None


def mark(marks: Marks | None, stage: str) -> None:
    """The time of `stage`, the first time it is reached."""
    if marks is not None and stage not in marks:
        marks[stage] = time.perf_counter()


def report(marks: Marks | None, reply_id: int) -> None:
    """Log the stages as seconds since `received`."""
    if marks is None:
        return
    t0 = marks["received"]
    stages = {k: round(v - t0, 6) for k, v in marks.items() if k != "received"}
    log.warning("stage-timing %s", orjson.dumps({"reply": reply_id, **stages}).decode())


# -- how long the event loop is held ---------------------------------------------------------------
# With `CHAT_LOOP_LAG` set, a timer on the server's event loop fires every LAG_INTERVAL seconds and
# records how late each firing came: the time the loop was held by other work (a callback that does
# not yield, a slow parse, a long GIL wait). Every `report_every` seconds it logs one `loop-lag {json}`
# line: the window (`from`, `to`, epoch seconds), the firings in it (`n`), `p50`, `p99`, `max` and
# every lag (`lags`), in milliseconds rounded to 0.1. The benchmark reads them from daphne's log.
# The firings cost CPU (~2-3% of a core on the 2-core machine of docs/performance.md). Off, the
# application is returned unwrapped: nothing runs.
LAG_INTERVAL = 0.005
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class _LoopLag:
    """One event loop's probe: a timer that re-arms itself, LAG_INTERVAL after each firing."""

    def __init__(self, loop: asyncio.AbstractEventLoop, report_every: float) -> None:
        self.loop, self.report_every = loop, report_every
        self.lags: list[float] = []
        self.window_start, self.window_end = time.time(), loop.time() + report_every
        self.handle = self._arm(loop.time())

    def _arm(self, now: float) -> asyncio.TimerHandle:
        due = now + LAG_INTERVAL
        return self.loop.call_at(due, self._fire, due)

    def _fire(self, due: float) -> None:
        now = self.loop.time()
        self.lags.append(max(0.0, now - due) * 1000)
        if now >= self.window_end:
            wall = time.time()
            _report_lag(self.lags, self.window_start, wall)
            self.lags, self.window_start, self.window_end = [], wall, now + self.report_every
        self.handle = self._arm(now)

    def stop(self) -> None:
        self.handle.cancel()
        _probes.pop(self.loop, None)


_probes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopLag] = weakref.WeakKeyDictionary()


def loop_lag_enabled() -> bool:
    return bool(os.environ.get("CHAT_LOOP_LAG"))


def with_loop_lag(app: ASGIApp) -> ASGIApp:
    """`app` itself when `CHAT_LOOP_LAG` is unset; else `app` starting the loop-lag probe on the event
    loop that serves it, at its first connection (on any ASGI server)."""
    if not loop_lag_enabled():
        return app

    async def probed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ensure_loop_lag()
        await app(scope, receive, send)

    return probed


def ensure_loop_lag(report_every: float = 1.0) -> None:
    """Start this event loop's loop-lag probe, once."""
    loop = asyncio.get_running_loop()
    if loop not in _probes:
        _probes[loop] = _LoopLag(loop, report_every)


def _report_lag(lags: list[float], start: float, end: float) -> None:
    ordered = sorted(lags)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    row: dict[str, Any] = {"from": round(start, 3), "to": round(end, 3), "n": len(lags), "p50": at(0.5)}
    row |= {"p99": at(0.99), "max": round(ordered[-1], 1), "lags": [round(x, 1) for x in lags]}
    log.warning("loop-lag %s", orjson.dumps(row).decode())
