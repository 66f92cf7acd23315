"""Deltas that wait in a socket's queue leave it as one event (both layers).

Under load a socket's channel can hold several `chat.delta` events of the same reply when its
consumer takes its turn; sending them as one websocket frame costs one dispatch, one JSON encoding
and one frame instead of many, so a slow moment does not turn into a backlog of tiny frames
(docs/performance.md; `BENCH_VARIANTS=no-coalesce` switches this off). Only contiguous deltas of one
reply are joined (the next one's `offset` is where the text so far ends), and only the events already
queued: nothing waits for more, and every other event keeps its place in the order. `joined` is the
same join for two events, which the in-memory layer uses to make room in a full channel (memory.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeGuard

ENABLED = True  # the benchmark's `no-coalesce` variant sets it off (bench/variants.py)


def _delta(event: object) -> TypeGuard[dict[str, Any]]:
    return (
        isinstance(event, dict)
        and event.get("type") == "chat.delta"
        and isinstance(event.get("offset"), int)
        and isinstance(event.get("text"), str)
    )


def coalesce(
    message: dict[str, Any], queued: deque[Any], read: Callable[[Any], object], take: Callable[[], Any]
) -> dict[str, Any]:
    """`message` (just received) joined with the deltas that continue it at the head of `queued`.

    `read(item)` turns a queued item into its event (for a peek); `take()` removes the head."""
    if not ENABLED or not queued or not _delta(message):
        return message
    texts = [message["text"]]
    end = message["offset"] + len(message["text"])
    while queued:
        nxt = read(queued[0])
        if not _delta(nxt) or nxt.get("message_id") != message.get("message_id") or nxt["offset"] != end:
            break
        take()
        texts.append(nxt["text"])
        end += len(nxt["text"])
    if len(texts) == 1:
        return message
    return {**message, "text": "".join(texts)}


def joined(first: object, second: object) -> dict[str, Any] | None:
    """`first` and `second` as one delta, if both are deltas of one reply and `second` continues `first`."""
    if not (ENABLED and _delta(first) and _delta(second)) or first.get("message_id") != second.get("message_id"):
        return None
    if second["offset"] != first["offset"] + len(first["text"]):
        return None
    return {**first, "text": first["text"] + second["text"]}
