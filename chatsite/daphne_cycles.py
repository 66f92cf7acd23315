"""Under daphne: a closed socket's objects are freed as it closes, not by the garbage collector later.

Two reference cycles in the libraries daphne runs on outlive every websocket:

- autobahn resolves its protocol's `is_closed` Deferred with the protocol itself, so the protocol holds
  the Deferred and the Deferred holds the protocol;
- Twisted's HTTP channel keeps the request that asked for the upgrade in its `requests`, and the request
  keeps the channel: daphne moves the connection to the websocket protocol and never finishes that
  request, so the two never let go of each other.

Hanging off them are the socket's transport, its ASGI queue, its consumer's task and their buffers,
about 80 objects a socket. Reference counting cannot free a cycle; only a collection of the generation it
has aged into can, and by the time a socket closes it has aged into the older ones: a collection there
walks everything that survived since, and at 200 streams such a collection after a batch of sockets
closed held the event loop for 50 to 140 ms at once (docs/performance.md, "Sixth session").

`install()` breaks both cycles where they are made: after a websocket protocol's connection is lost its
fired `is_closed` no longer holds it as its result (nothing in daphne awaits it), and once a request has
handed its connection to a websocket the channel forgets the request.
"""

from __future__ import annotations

import sys
from typing import Any

_ORIGINALS: dict[str, Any] = {}


def install() -> bool:
    """Break the two cycles (see the module's doc); True if done (under daphne)."""
    ws_module: Any = sys.modules.get("daphne.ws_protocol")
    http_module: Any = sys.modules.get("daphne.http_protocol")
    if ws_module is None or http_module is None:
        return False
    if _ORIGINALS:
        return True
    protocol = ws_module.WebSocketProtocol
    # The class daphne's factory builds; daphne_bodies may have swapped in a subclass of it.
    request = next(c for c in http_module.WebRequest.__mro__ if c.__module__ == "daphne.http_protocol")
    original_lost, original_process = protocol.connectionLost, request.process

    def connectionLost(self: Any, reason: Any) -> None:
        try:
            original_lost(self, reason)
        finally:
            closed = self.__dict__.get("is_closed")
            if getattr(closed, "called", False) and getattr(closed, "result", None) is self:
                # Resolved with the protocol itself and awaited by nothing: it no longer holds the protocol.
                closed.result = None

    def process(self: Any) -> None:
        original_process(self)
        channel = self.channel
        # Upgraded: the connection is the websocket protocol's now (daphne took `self.transport`). The
        # channel is left as Twisted's own `requestDone` would leave it, without this request.
        if self.transport is None and channel is not None and self in channel.requests:
            channel.requests.remove(self)

    connectionLost.__doc__, process.__doc__ = original_lost.__doc__, original_process.__doc__
    _ORIGINALS.update(connectionLost=(protocol, original_lost), process=(request, original_process))
    protocol.connectionLost = connectionLost
    request.process = process
    return True


def uninstall() -> None:
    """The libraries' own methods back (tests, the benchmark's `cycles` variant)."""
    for name, (cls, original) in _ORIGINALS.items():
        setattr(cls, name, original)
    _ORIGINALS.clear()
