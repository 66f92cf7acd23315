"""The README's promise: while replies stream, each process writes their text in one batched
database write a second (CHAT_FLUSH_INTERVAL), however many replies and tokens there are."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conversations.generation import flusher
from tests.conftest import open_socket
from tests.factories import make_conversation
from tests.fakes.provider import Reply

pytestmark = pytest.mark.django_db(transaction=True)

REPLIES = 5


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


async def test_streaming_replies_are_written_once_a_second_in_one_batch(alice, fake_provider, settings, monkeypatch):
    settings.CHAT_FLUSH_INTERVAL = 1.0
    settings.CHAT_MAX_FRAMES_PER_10S = 1000
    flushes: list[tuple[float, int, list[str]]] = []
    original = flusher._flush_rows

    def counted(rows, watched):
        with CaptureQueriesContext(connection) as queries:
            result = original(rows, watched)
        flushes.append((time.monotonic(), len(rows), [q["sql"] for q in queries.captured_queries]))
        return result

    monkeypatch.setattr(flusher, "_flush_rows", counted)
    text = " ".join(f"t{i}" for i in range(350))  # 350 tokens, 10 ms apart: about 3.5 s each
    fake_provider.script(*[Reply(text=text, token_delay=0.01) for _ in range(REPLIES)])
    sockets = []
    for n in range(REPLIES):
        conv = await sync_to_async(make_conversation)(alice)
        ok, ws = await open_socket(alice, conv.pk)
        await ws.recv()
        await ws.send_message(f"reply {n}")
        sockets.append(ws)
    began = time.monotonic()
    for ws in sockets:
        end = await ws.until("end", timeout=90)  # generous: the test machine is shared
        assert end["status"] == "complete"
    took = time.monotonic() - began
    assert took > 2.5, "the replies must stream for a few seconds for this to measure anything"

    writes = [(at, n, sql) for at, n, sql in flushes if n]
    # At most one flush per interval (plus one for rounding at either end), not one per token.
    assert 2 <= len(writes) <= took / settings.CHAT_FLUSH_INTERVAL + 2, [
        (round(at - began, 2), n) for at, n, _ in writes
    ]
    for (at, _, _), (later, _, _) in zip(writes, writes[1:], strict=False):
        assert later - at >= settings.CHAT_FLUSH_INTERVAL * 0.9
    # Each flush writes every reply that grew, all in one transaction: one UPDATE statement, run
    # once per reply (`executemany`, which Django logs as "N times: UPDATE ...").
    assert max(n for _, n, _ in writes) == REPLIES
    for _, n, sql in writes:
        updates = [s for s in sql if "UPDATE" in s.upper()]
        assert updates == [updates[0]] and updates[0].startswith(f"{n} times: UPDATE"), sql
    for ws in sockets:
        await ws.close()
    await asyncio.sleep(0)
