"""chatsite/daphne_writes.py on Twisted's real asyncio reactor and real sockets, in a child process (the
reactor is process-wide): what a connection writes arrives whole and in order, at once when nothing is
buffered, through Twisted's buffer when the kernel's is full, and a pull producer is still served.
And under a real daphne: frames of every length reach a client whole, and closed sockets leave no
cycles for the garbage collector (chatsite/daphne_cycles.py)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.fakes.provider import Reply
from tests.live import ROOT

# The child: a Twisted TCP server on the asyncio reactor, with daphne's server module loaded (as under
# daphne) and the patch installed unless told not to. Each connection runs one scenario, then closes.
CHILD = textwrap.dedent(
    """
    import json, sys
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
    import daphne.server  # noqa: F401  (install() acts only under daphne)
    from twisted.internet import protocol, reactor
    from zope.interface import implementer
    from twisted.internet.interfaces import IPullProducer
    from chatsite import daphne_writes

    patched = daphne_writes.install() if sys.argv[1] == "patched" else False
    if sys.argv[1] == "patched":  # daphne's frames too, as chatsite/asgi.py does under daphne
        from daphne.ws_protocol import WebSocketProtocol
        assert daphne_writes.install_frames()
        assert WebSocketProtocol.serverSend.__module__ == "chatsite.daphne_writes"
    registrations = []
    add_writer = reactor.addWriter
    def counted(writer):
        registrations.append(sum(map(len, writer._tempDataBuffer)))
        return add_writer(writer)
    reactor.addWriter = counted

    BIG = bytes(range(256)) * (32 * 1024)  # 8 MB: more than the kernel's buffers take at once

    @implementer(IPullProducer)
    class Pull:
        def __init__(self, transport):
            self.transport, self.left = transport, 5
        def resumeProducing(self):
            if self.left:
                self.left -= 1
                self.transport.write(b"pull%d;" % self.left)
            else:
                self.transport.unregisterProducer()
                self.transport.loseConnection()
        def stopProducing(self):  # the connection is going: write nothing more
            self.left = 0

    class Scenario(protocol.Protocol):
        def dataReceived(self, data):
            name = data.decode().strip()
            before = len(registrations)
            if name == "small":
                for i in range(100):
                    self.transport.write(b"frame%03d;" % i)
            elif name == "big":
                self.transport.write(b"head;")
                self.transport.write(BIG)
                for i in range(10):
                    self.transport.write(b"tail%d;" % i)
            elif name == "pull":
                self.transport.registerProducer(Pull(self.transport), False)
                return
            print(json.dumps({"scenario": name, "registrations": registrations[before:]}), flush=True)
            self.transport.loseConnection()

    factory = protocol.Factory.forProtocol(Scenario)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(json.dumps({"port": port.getHost().port, "patched": patched}), flush=True)
    reactor.run()
    """
)


def _read_all(port: int, scenario: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(scenario.encode() + b"\n")
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(params=["patched", "twisted"])
def server(request):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, request.param], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        hello = json.loads(proc.stdout.readline())
        assert hello["patched"] is (request.param == "patched")
        yield request.param, hello["port"], proc
    finally:
        proc.kill()
        proc.wait()


def _report(proc: subprocess.Popen[str]) -> dict:
    return json.loads(proc.stdout.readline())


def test_small_writes_arrive_in_order_and_skip_the_reactor_when_patched(server):
    mode, port, proc = server
    assert _read_all(port, "small") == b"".join(b"frame%03d;" % i for i in range(100))
    registrations = _report(proc)["registrations"]
    if mode == "patched":
        assert registrations == []  # each frame went to the kernel at once
    else:
        assert len(registrations) >= 1  # Twisted buffers and waits for the reactor


def test_a_write_larger_than_the_kernel_takes_is_buffered_and_what_follows_stays_behind_it(server):
    mode, port, proc = server
    big = bytes(range(256)) * (32 * 1024)
    got = _read_all(port, "big")
    assert got == b"head;" + big + b"".join(b"tail%d;" % i for i in range(10))
    registrations = _report(proc)["registrations"]
    assert registrations, "the kernel took 8 MB at once: this test no longer covers the partial write"
    if mode == "patched":
        # The head and what the kernel took of the big write went at once; the rest waits for the reactor.
        assert 5 < registrations[0] < len(big)
    else:
        assert registrations[0] == len(b"head;")


def test_a_pull_producer_is_still_asked_for_more(server):
    _, port, _ = server
    assert _read_all(port, "pull") == b"pull4;pull3;pull2;pull1;pull0;"


@pytest.mark.django_db(transaction=True)
async def test_frames_of_every_length_reach_a_real_client_whole(alice, fake_provider, live_server_factory, settings):
    """Under daphne, text frames are framed by `server_send`: each of the three length encodings (7, 16
    and 64 bits) and multi-byte text reach an aiohttp client, which checks the framing, exactly. So does
    an `end` over daphne's 1 MiB message limit (which is for what clients send): autobahn refused to send
    it, and the socket closed with 1011."""
    from asgiref.sync import sync_to_async

    from tests.factories import make_conversation
    from tests.wsclient import connect_live

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Deltas of ~60 B, ~1 KB, ~160 KB and ~1.2 MB; the `end`, ~1.4 MB.
    chunks = ["Hi", " ünï 漢字 🎉" * 40, " 長" * 40_000, " 長" * 300_000, " end."]
    fake_provider.script(Reply(chunks=chunks, token_delay=0.01))
    server = live_server_factory(
        OPENAI_API_KEY="x", OPENAI_BASE_URL=fake_provider.openai_base_url, CHAT_DEFAULT_MODEL="openai:gpt-test"
    )
    conversation = await sync_to_async(make_conversation)(alice)
    ws = await connect_live(server, alice, conversation.pk)
    try:
        assert await ws.recv() == {"type": "state", "generating": None}
        await ws.send_message("frames, please")
        end = await ws.until("end", timeout=20)
        assert end["status"] == "complete" and end["content"] == "".join(chunks)
        assert ws.text_of(end["message_id"]) == "".join(chunks)
        assert len([f for f in ws.frames if f["type"] == "delta"]) >= 3
    finally:
        await ws.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("variants, left", [("", False), ("cycles", True)])
async def test_closed_sockets_leave_nothing_for_the_collector(variants, left, alice, live_server_factory, tmp_path):
    """Under daphne, a closed socket's protocol, its HTTP upgrade request and its consumer are freed as it
    closes (chatsite/daphne_cycles.py, `dispatch_many`): none is among what daphne's collector finds
    unreachable. With the libraries' cycles left in (the benchmark's `cycles` variant), all three are."""
    import glob

    from asgiref.sync import sync_to_async

    from tests.factories import make_conversation
    from tests.wsclient import connect_live

    out = tmp_path / "garbage"
    server = live_server_factory(
        app="bench.variants:application", BENCH_VARIANTS=",".join(filter(None, [variants, f"gc-garbage={out}"]))
    )
    conversation = await sync_to_async(make_conversation)(alice)
    for _ in range(5):
        ws = await connect_live(server, alice, conversation.pk)
        assert await ws.recv() == {"type": "state", "generating": None}
        await ws.close()
    closed = time.time()
    # daphne writes what its collector found every 3 s, after a collection: wait for one made after the closes.
    kinds: dict[str, int] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        dumps = [p for p in glob.glob(f"{out}.*[0-9]") if os.path.getmtime(p) > closed + 3.5]
        if dumps:
            with open(dumps[0]) as f:
                kinds = dict(json.load(f)["kinds"])
            break
    else:
        pytest.fail("daphne wrote no garbage summary")
    found = {k for k in ("WebSocketProtocol", "HTTPChannel", "ChatConsumer") if kinds.get(k, 0) >= 5}
    assert found == ({"WebSocketProtocol", "HTTPChannel", "ChatConsumer"} if left else set()), kinds
