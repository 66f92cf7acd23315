"""A delta handed straight to a socket of this process that has nothing before it.

Queued, every delta a socket relays wakes the socket's loop: the queue's future, a turn of the event
loop, the layer's `receive`, the socket's lock and dispatch, per delta and per socket (thousands a
second at a few hundred streams). A socket registers a taker with its layer (`ChatConsumer.take_delta`),
which the layer's `group_send_local` offers each delta of a reply of this process before queueing it.
The taker handles the delta at once, as the socket's loop would have, when that loop has nothing in
hand and nothing is queued for the socket: so the order a socket sees is the order it would have seen.
Otherwise it declines and the delta is queued as before; so is every other event, and every delta
another process publishes through Redis. The benchmark's `no-direct-deltas` variant registers no taker
(docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

Taker = Callable[[dict[str, Any]], bool]

DELTA = "chat.delta"


def handed(takers: dict[str, Taker], channel: str, queue: asyncio.Queue[Any] | None, message: dict[str, Any]) -> bool:
    """Whether the channel's socket took `message` (a delta) at once; False: queue it."""
    take = takers.get(channel)
    return take is not None and (queue is None or queue.empty()) and take(message)
