"""A 20 MB upload is streamed through the upload view to storage, never held whole in memory.

Measured with tracemalloc in-process, through the real ASGI handler, middleware (session, CSRF)
and view, with the request body handed over in 64 KiB pieces made on demand, as a server would;
and as the peak resident memory of a real daphne process (docs/performance.md, "Uploads").
"""

from __future__ import annotations

import asyncio
import http.client
import sys
import tracemalloc
import uuid

import pytest
from django.core.handlers.asgi import ASGIHandler

from conversations.models import Attachment
from tests.conftest import session_cookie, sqlite_pass_only
from tests.factories import make_conversation

MB = 1024 * 1024
LINE = b"The quick brown fox jumps over the lazy dog, 0123456789.\n"
PIECE = 64 * 1024


def multipart(field: str, name: str, size: int):
    """(boundary, length, an iterator of the body's pieces): a `size`-byte text file, generated as it is read."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    lines_per_piece = PIECE // len(LINE)
    pieces = size // (lines_per_piece * len(LINE))

    def body():
        yield head
        for _ in range(pieces):
            yield LINE * lines_per_piece
        yield tail

    return boundary, len(head) + pieces * lines_per_piece * len(LINE) + len(tail), body()


def post_through_asgi(path: str, cookie: str, field: str, size: int) -> tuple[int, bytes, float]:
    """POST the file through Django's ASGI handler; (status, body, traced peak in MiB)."""
    boundary, length, body = multipart(field, "big.txt", size)
    token = "a" * 32
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
            (b"content-length", str(length).encode()),
            (b"cookie", f"sessionid={cookie}; csrftoken={token}".encode()),
            (b"x-csrftoken", token.encode()),
        ],
        "server": ("localhost", 80),
        "client": ("127.0.0.1", 40000),
    }
    sent: list[dict] = []
    upcoming = [next(body)]  # one piece ahead, to know which piece is the last

    async def receive():
        if not upcoming:
            await asyncio.Event().wait()  # the body is over and the client stays: no disconnect
        piece = upcoming.pop()
        following = next(body, None)
        if following is not None:
            upcoming.append(following)
        return {"type": "http.request", "body": piece, "more_body": following is not None}

    async def send(message):
        sent.append(message)

    async def run():
        await ASGIHandler()(scope, receive, send)

    tracemalloc.start()
    try:
        asyncio.run(run())
        peak = tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, content, peak


@sqlite_pass_only
@pytest.mark.django_db(transaction=True)
def test_a_20_mb_upload_is_streamed_to_storage(alice, settings, tmp_path, capsys):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.CHAT_DEFAULT_MODEL = "openai:gpt-test"
    conversation = make_conversation(alice)
    cookie = session_cookie(alice)
    path = f"/conversations/{conversation.pk}/attachments/"
    # Warm up (imports, first queries), then measure a file just under the 20 MB limit.
    assert post_through_asgi(path, cookie, "file", MB)[0] == 201
    status, body, peak = post_through_asgi(path, cookie, "file", 20 * MB - PIECE)
    assert status == 201, body
    stored = Attachment.objects.order_by("-created_at").first()
    assert stored.size > 19 * MB and stored.kind == "text" and stored.tokens > 1_000_000
    with capsys.disabled():
        print(f"\n[upload memory] a {stored.size / MB:.1f} MiB upload: traced peak {peak:.2f} MiB")
    # Read whole, the file alone would be 20 MiB (and its decoded text as much again).
    assert peak < 4


def peak_rss_mib(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) // 1024


@sqlite_pass_only
@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("asgi_server", ["daphne", "uvicorn"])
def test_the_server_does_not_hold_an_upload_in_memory(alice, live_server_factory, tmp_path, asgi_server):
    """Twisted, under daphne, would parse a multipart body into memory itself (about ten times its size)
    before Django streams it; chatsite/daphne_bodies.py turns that off. uvicorn (the production option)
    hands the body on in pieces as it comes."""
    server = live_server_factory(
        server=asgi_server, MEDIA_ROOT=str(tmp_path / "media"), CHAT_DEFAULT_MODEL="openai:gpt-test"
    )
    conversation = make_conversation(alice)
    cookie, token = session_cookie(alice), "a" * 32

    def upload(size: int) -> int:
        boundary, length, body = multipart("file", "big.txt", size)
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        connection.putrequest("POST", f"/conversations/{conversation.pk}/attachments/")
        for name, value in (
            ("Content-Type", f"multipart/form-data; boundary={boundary}"),
            ("Content-Length", str(length)),
            ("Cookie", f"sessionid={cookie}; csrftoken={token}"),
            ("X-CSRFToken", token),
        ):
            connection.putheader(name, value)
        connection.endheaders()
        for piece in body:
            connection.send(piece)
        status = connection.getresponse().status
        connection.close()
        return status

    assert upload(MB) == 201  # warm up: imports, first queries
    before = peak_rss_mib(server.proc.pid)
    assert upload(20 * MB - PIECE) == 201
    grown = peak_rss_mib(server.proc.pid) - before
    # The body passes through daphne's queue once (20 MiB); Twisted's own parse took ~210 MiB more.
    assert grown < 80, f"the peak grew {grown} MiB for a 20 MiB upload"
