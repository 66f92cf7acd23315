"""A socket whose client stops reading holds up no one: the reply streams on to the other sockets and is
stored whole, and the stalled client, once it reads again, gets every delta and the `end`. Under daphne
(Twisted buffers what the client does not read) and uvicorn (its flow control pauses that socket's
consumer alone, whose full channel then joins the deltas at its tail: conversations/layers/memory.py),
on real processes over loopback."""

from __future__ import annotations

import asyncio
import fcntl
import json
import socket
import struct
import termios

import pytest
from asgiref.sync import sync_to_async

from conversations.models import Message
from tests.conftest import Socket, session_cookie, sqlite_pass_only
from tests.factories import make_conversation
from tests.fakes.provider import Reply
from tests.wsclient import connect_live

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, sqlite_pass_only]

# 12 MiB of reply in 8 KiB chunks: three times what the kernel's socket buffers hold for a client that
# reads nothing (its receive buffer is set to 8 KiB; the server's send buffer grows to about 4 MiB on
# loopback), so the server must hold or pause the rest; and 1,500 deltas, more than a channel of the
# in-memory layer holds (1,000) while uvicorn pauses the stalled socket's consumer.
CHUNK = 8 * 1024
TEXT_CHUNKS = [f"{i:05d}" + "x" * (CHUNK - 6) + " " for i in range(1500)]
TEXT = "".join(TEXT_CHUNKS)


def stalled_handshake(port: int, conversation_id: int, cookie: str) -> socket.socket:
    """A websocket opened by hand on a socket with a small receive buffer; nothing read after the 101."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        (
            f"GET /ws/conversations/{conversation_id}/ HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://127.0.0.1:{port}\r\nCookie: sessionid={cookie}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: nothing past the response's head is taken
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        piece = sock.recv(n - len(data))
        if not piece:
            raise ConnectionError("closed")
        data += piece
    return data


def read_text_frame(sock: socket.socket) -> dict:
    """The next unfragmented text frame from the server (unmasked, as servers send them), as JSON; pings
    (the server's keepalive) are skipped."""
    while True:
        first, second = read_exactly(sock, 2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", read_exactly(sock, 2))[0]
        elif length == 127:
            length = struct.unpack("!Q", read_exactly(sock, 8))[0]
        payload = read_exactly(sock, length)
        if first == 0x89:  # ping
            continue
        assert first == 0x81, f"not a final text frame: {first:#x}"
        return json.loads(payload)


def kernel_queued(client: socket.socket) -> int:
    """Bytes the kernel holds for this connection: unread in the client's receive queue plus unsent in
    the server's send queue (/proc/net/tcp's tx_queue of the server's end)."""
    unread = struct.unpack("i", fcntl.ioctl(client, termios.FIONREAD, b"\0\0\0\0"))[0]
    client_port = client.getsockname()[1]
    server_port = client.getpeername()[1]
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            if (local, remote) == (server_port, client_port):
                return unread + int(fields[4].split(":")[0], 16)
    raise AssertionError("the server's end of the connection is not in /proc/net/tcp")


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
async def test_a_client_that_stops_reading_holds_up_no_one(alice, fake_provider, live_server_factory, server):
    fake_provider.script(Reply(chunks=TEXT_CHUNKS, token_delay=0.001))
    live = live_server_factory(
        server=server,
        OPENAI_API_KEY="x",
        OPENAI_BASE_URL=fake_provider.openai_base_url,
        CHAT_DEFAULT_MODEL="openai:gpt-test",
        CHAT_MAX_FRAMES_PER_10S="100000",
    )
    conv = await sync_to_async(make_conversation)(alice)
    cookie = await sync_to_async(session_cookie)(alice)
    stalled = await asyncio.to_thread(stalled_handshake, live.port, conv.pk, cookie)
    reader: Socket = await connect_live(live, alice, conv.pk, cookie=cookie, max_msg_size=64 << 20)
    try:
        await reader.recv()  # state
        await reader.send_message("a long one")
        start = await reader.until("start")
        # The reply streams on to the reading socket and ends there while the other reads nothing.
        end = await reader.until("end", timeout=60, message_id=start["message_id"])
        # The kernel holds a fraction of what the stalled client was sent: the server holds the rest
        # (daphne) or has paused that socket's sends (uvicorn). So the stall was real.
        assert kernel_queued(stalled) < len(TEXT) // 2
        assert (end["status"], end["content"]) == ("complete", TEXT)
        assert reader.text_of(start["message_id"]) == TEXT
        stored = await sync_to_async(Message.objects.get)(pk=start["message_id"])
        assert (stored.status, stored.content) == ("complete", TEXT)

        # The stalled client reads now: every frame it was sent, whole and in order, through the `end`.
        def catch_up() -> tuple[str, dict]:
            stalled.settimeout(30)
            text, frames = "", []
            while True:
                frame = read_text_frame(stalled)
                frames.append(frame["type"])
                if frame["type"] == "state":
                    assert frame["generating"] is None
                elif frame["type"] == "delta" and frame["message_id"] == start["message_id"]:
                    assert frame["offset"] == len(text), f"gap or overlap at {frame['offset']} (have {len(text)})"
                    text += frame["text"]
                elif frame["type"] == "end" and frame["message_id"] == start["message_id"]:
                    return text, frame

        text, stalled_end = await asyncio.to_thread(catch_up)
        assert (stalled_end["status"], stalled_end["content"]) == ("complete", TEXT)
        assert text == TEXT
    finally:
        stalled.close()
        await reader.close()
