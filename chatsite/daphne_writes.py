"""Under daphne: a text frame is framed in one step, and a socket's write goes to the kernel at once when
nothing is waiting before it.

Twisted's TCP transport never writes in `write()`: it buffers the bytes and registers the socket
with the reactor for writability; on the loop's next turn the reactor calls `doWrite`, which sends
and unregisters. Under asyncio's reactor that is, for every websocket frame a socket relays, an
`add_writer` and a `remove_writer` (an `epoll_ctl` each), a handle, a turn of the loop and Twisted's
logging context around `doWrite`: a large share of daphne's CPU when it relays thousands of deltas a
second (docs/performance.md, "Fifth session: a socket's writes, a stream's reads, a reply's end").

Here `write` sends at once, as asyncio's own transports do, when the transport has nothing buffered
and nothing that depends on its buffer draining: no pull producer (it is asked for more only when a
buffer drains), no producer paused, not closing, and no TLS started on the connection (its bytes go
through the TLS layer). What the kernel does not take (a full socket buffer) is buffered as Twisted
always did, and so is anything written while bytes wait, so the order holds. A send that fails is
not reported here: the bytes are buffered instead, and Twisted's `doWrite` meets the same error and
closes the connection its usual way.

The text frames themselves: daphne hands each to autobahn's `sendMessage`, which checks its arguments,
counts traffic statistics, weighs compression and fragmentation, builds the header in `sendFrame`,
formats a debug line's arguments in `sendData` whether or not debug logging is on, then writes. For
the frames this site sends (text, unfragmented, uncompressed, unmasked, no frame logging or timing,
nothing queued before them) the `serverSend` that `install_frames` puts on daphne's protocol writes
the same bytes in one step: the header (RFC 6455 §5.2: FIN and the text opcode, then the length in 7,
16 or 64 bits) and the UTF-8 payload. Any other frame goes through autobahn as before. What these
frames skip besides: autobahn's traffic counters (which nothing here reads) and daphne's debug log
line per frame.

And autobahn's size check. daphne sets one limit, 1 MiB (`websocket_max_message_size`), for the
messages a socket receives, and autobahn holds the messages it sends to the same limit: a frame over
it raised inside the consumer, and the socket closed with 1011. A reply's `end` carries its whole
text, `state` and a `resume`'s delta the text so far, and a `path` every message of the path, so a
reply of over a mebibyte, or a branch switched on a long thread, closed every socket of the
conversation, and a page that reconnected mid-reply met the same `state` again. The site's frames
are its own data, so here they go out whatever their size; what a socket receives stays limited.

The benchmark's `twisted-writes` variant leaves Twisted's transport as it is and `autobahn-frames`
daphne's frames (bench/variants.py).
"""

from __future__ import annotations

import struct
import sys
from typing import Any

_ORIGINAL: Any = None
_ORIGINAL_SEND: Any = None


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
    tcp.Connection.write = write  # type: ignore[method-assign]
    _ORIGINAL = original
    return True


def uninstall() -> None:
    """Twisted's own write back (the benchmark's `twisted-writes` variant, tests)."""
    global _ORIGINAL
    if _ORIGINAL is None:
        return
    from twisted.internet import tcp

    tcp.Connection.write = _ORIGINAL  # type: ignore[method-assign]
    _ORIGINAL = None


def install_frames() -> bool:
    """Frame daphne's text messages in one step (see the module's doc); True if done (under daphne)."""
    global _ORIGINAL_SEND
    module: Any = sys.modules.get("daphne.ws_protocol")
    if module is None or _ORIGINAL_SEND is not None:
        return _ORIGINAL_SEND is not None
    protocol = module.WebSocketProtocol
    original = protocol.serverSend
    open_state = protocol.STATE_OPEN
    short, medium = struct.Struct("!BB").pack, struct.Struct("!BBH").pack
    long = struct.Struct("!BBQ").pack

    def serverSend(self: Any, content: Any, binary: bool = False) -> None:
        if (
            not binary
            and self.state == open_state
            and self._perMessageCompress is None
            and not self.autoFragmentSize
            and not self.maskServerFrames
            and not self.logFrames
            and self.trackedTimings is None
            and not self.send_queue
        ):
            payload = content.encode("utf8")
            size = len(payload)
            # Whatever its size: daphne's message limit is for what the client sends (see the module's doc).
            if size <= 125:
                header = short(0x81, size)
            elif size <= 0xFFFF:
                header = medium(0x81, 126, size)
            else:
                header = long(0x81, 127, size)
            self.transport.write(header + payload)
            return
        original(self, content, binary)

    serverSend.__doc__ = original.__doc__
    protocol.serverSend = serverSend
    _ORIGINAL_SEND = original
    return True


def uninstall_frames() -> None:
    """autobahn's framing back (the benchmark's `autobahn-frames` variant, tests)."""
    global _ORIGINAL_SEND
    if _ORIGINAL_SEND is None:
        return
    sys.modules["daphne.ws_protocol"].WebSocketProtocol.serverSend = _ORIGINAL_SEND
    _ORIGINAL_SEND = None
