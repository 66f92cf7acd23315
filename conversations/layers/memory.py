"""Channels' in-memory layer (one process), made cheap per message for hundreds of live streams.

Channels' InMemoryChannelLayer costs grow with the number of streams (see docs/architecture.md,
"The channel layer", and the A/B runs in docs/performance.md):
- it walks every channel and group on every send and receive to drop expired messages;
  expiry is a safety net (60 s), so sweeping once a second changes nothing a user can see;
- `group_send` starts one task per member channel and awaits them with `as_completed`, although
  each put is synchronous; here the puts happen in a plain loop;
- every message is deep-copied per channel; a message of plain scalars (every `chat.delta`)
  gets a flat copy instead, which is the same thing for such a message.

- a delta of this process's reply goes straight to a socket with nothing queued and nothing in hand
  (direct.py);
- a delta received with more deltas of the same reply queued behind it leaves as one (coalesce.py);
- a full channel (its consumer stopped taking messages: under uvicorn, a client that stopped reading
  pauses its consumer's sends) makes room by joining contiguous deltas at its tail, so a reply's
  text and its `chat.end` still get in; only a message that finds no such room is missed, as in the
  base class.

Private parts of the base class relied on (pinned by tests/test_layers.py): `_clean_expired` (which
its `receive` calls), and its `channels` dict of `asyncio.Queue`s holding `(expires_at, message)`
(an `asyncio.Queue`'s `_queue` deque, peeked at by `receive`).
Measured: CPU per token 1.01 ms with the base class, 0.54 ms with this one (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from copy import deepcopy
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as BaseInMemoryChannelLayer

from .coalesce import coalesce, joined
from .direct import DELTA, Taker, handed

_SCALARS = (str, int, float, bool, type(None))


def copy_message(message: dict[str, Any]) -> dict[str, Any]:
    """An independent copy of a message, as deepcopy makes it, without deepcopy's cost for flat ones."""
    for value in message.values():
        if not isinstance(value, _SCALARS):
            return deepcopy(message)
    return dict(message)


def _make_room(queued: deque[tuple[float, dict[str, Any]]], message: dict[str, Any], expires: float) -> bool:
    """Put `message` on a full channel's queue by joining deltas (see the module's doc); False if it cannot.

    A delta that continues the last one queued joins it; any other message takes the place that
    joining the last two queued deltas frees. Each join copies the text joined, once per message put
    on a full channel."""
    if queued:
        merged = joined(queued[-1][1], message)
        if merged is not None:
            queued[-1] = (expires, merged)
            return True
    if len(queued) >= 2:
        merged = joined(queued[-2][1], queued[-1][1])
        if merged is not None:
            queued.pop()
            queued[-1] = (queued[-1][0], merged)
            queued.append((expires, copy_message(message)))
            return True
    return False


class InMemoryChannelLayer(BaseInMemoryChannelLayer):
    sweep_interval = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_sweep = 0.0
        self.takers: dict[str, Taker] = {}  # channel -> its socket's taker of deltas (direct.py)

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < self.sweep_interval:
            return
        self._last_sweep = now
        super()._clean_expired()

    def _put(self, channel: str, message: dict[str, Any]) -> None:
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        expires = time.time() + self.expiry
        try:
            queue.put_nowait((expires, copy_message(message)))
        except asyncio.QueueFull:
            if not _make_room(queue._queue, message, expires):
                raise ChannelFull(channel) from None

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message; a delta with the contiguous deltas queued behind it joined (coalesce.py)."""
        message: dict[str, Any] = await super().receive(channel)
        queue = self.channels.get(channel)
        if queue is None:
            return message
        message = coalesce(message, queue._queue, lambda item: item[1], queue.get_nowait)
        if queue.empty():  # as the base class does once a queue is drained
            self.channels.pop(channel, None)
        return message

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Put a message on a channel (the base class's checks, then one put)."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        assert "__asgi_channel__" not in message
        self._put(channel, message)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Put a message on every channel of a group; a full channel misses it, as in the base class."""
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self.group_send_local(group, message)

    def group_send_local(self, group: str, message: dict[str, Any]) -> None:
        """`group_send` without the checks and without awaiting: one process has every member. A delta
        goes straight to each socket that can take it now (direct.py)."""
        self._clean_expired()
        takers = self.takers if message["type"] == DELTA and self.takers else None
        for channel in list(self.groups.get(group, ())):
            if takers is not None and handed(takers, channel, self.channels.get(channel), message):
                continue
            try:  # noqa: SIM105 - a plain try costs less than contextlib.suppress on this hot path
                self._put(channel, message)
            except ChannelFull:
                pass

    async def remote_listeners(self, group: str) -> bool:
        """One process: no other process listens (the Redis layer's question, redis_pubsub.py)."""
        return False
