"""Where a send's time goes before its first token: per-stage marks for the benchmark.

Off unless `CHAT_STAGE_TIMING` is set (then each reply logs one `stage-timing {json}` line at its first
token; `bench/` sets it and reads the lines from daphne's log). The stages, in order:

- `received`: the `send` frame reached the socket's handler;
- `db_start`: the socket's database thread began storing it (the wait before is the queue for it);
- `stored`: the message and its reply's row are committed;
- `task`: the reply's task began running;
- `request`: the provider request is built (history read, summary, attachments);
- `provider`: the provider call began (the HTTP request goes out);
- `first_token`: the provider's first text arrived, parsed;
- `published`: that first delta was handed to the channel layer.

Each is seconds since `received`, from one monotonic clock in one process.
"""

from __future__ import annotations

import logging
import os
import time

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
