"""Under daphne: a socket's write goes to the kernel at once when nothing is waiting before it.

Twisted's TCP transport never writes in `write()`: it buffers the bytes and registers the socket
with the reactor for writability; on the loop's next turn the reactor calls `doWrite`, which sends
and unregisters. Under asyncio's reactor that is, for every websocket frame a socket relays, an
`add_writer` and a `remove_writer` (an `epoll_ctl` each), a handle, a turn of the loop and Twisted's
logging context around `doWrite`: a large share of daphne's CPU when it relays thousands of deltas a
second (docs/performance.md, "Writes straight to the socket").

Here `write` sends at once, as asyncio's own transports do, when the transport has nothing buffered
and nothing that depends on its buffer draining: no pull producer (it is asked for more only when a
buffer drains), no producer paused, not closing, and no TLS started on the connection (its bytes go
through the TLS layer). What the kernel does not take (a full socket
buffer) is buffered as Twisted always did, and so is anything written while bytes wait, so the order
holds. A send that fails is not reported here: the bytes are buffered instead, and Twisted's
`doWrite` meets the same error and closes the connection its usual way.

The benchmark's `twisted-writes` variant leaves Twisted's transport as it is (bench/variants.py).
"""

from __future__ import annotations

import sys
from typing import Any

_ORIGINAL: Any = None


def install() -> bool:
    """Patch Twisted's TCP connections to write at once when they can; True if done (under daphne)."""
    global _ORIGINAL
    if "daphne.server" not in sys.modules or _ORIGINAL is not None:
        return _ORIGINAL is not None
    from twisted.internet import tcp

    original = tcp.Connection.write

    def write(self: Any, data: bytes) -> None:
        if (
            data
            and type(data) is bytes
            and self.connected
            and not self.TLS
            and not self._tempDataBuffer
            and self.offset == len(self.dataBuffer)
            and not self.disconnecting
            and not self._writeDisconnecting
            and not self._writeDisconnected
            and (self.producer is None or (self.streamingProducer and not self.producerPaused))
        ):
            sent = self.writeSomeData(data)
            if type(sent) is int and sent > 0:
                if sent == len(data):
                    return
                data = data[sent:]
        original(self, data)

    write.__doc__ = original.__doc__
    tcp.Connection.write = write
    _ORIGINAL = original
    return True


def uninstall() -> None:
    """Twisted's own write back (the benchmark's `twisted-writes` variant, tests)."""
    global _ORIGINAL
    if _ORIGINAL is None:
        return
    from twisted.internet import tcp

    tcp.Connection.write = _ORIGINAL
    _ORIGINAL = None
