"""Exports stream: a 10,000-message account is zipped without the process holding it (numbers in
docs/performance.md), and under ASGI the download really is sent chunk by chunk."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile

import pytest
from django.test import AsyncClient

from accounts import exporting
from conversations.models import Message
from tests.factories import link_path, make_conversation

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
]


def fill(owner, conversations: int, per_conversation: int, chars: int = 600) -> int:
    """`conversations` threads of `per_conversation` messages of about `chars` characters; total text size."""
    total = 0
    for c in range(conversations):
        conv = make_conversation(owner, title=f"Thread {c}")
        rows = []
        for i in range(per_conversation):
            words = [WORDS[(c * 7 + i * 3 + j) % len(WORDS)] + str((i * j) % 97) for j in range(chars // 8)]
            text = " ".join(words)
            total += len(text)
            rows.append(Message(conversation=conv, role="user" if i % 2 == 0 else "assistant", content=text))
        link_path(conv, Message.objects.bulk_create(rows, batch_size=1000))
    return total


@pytest.mark.django_db
@pytest.mark.parametrize(("conversations", "per_conversation"), [(100, 100), (1, 10_000)], ids=["100x100", "1x10000"])
def test_exporting_10000_messages_keeps_memory_flat(alice, conversations, per_conversation):
    text_size = fill(alice, conversations, per_conversation)
    assert text_size > 5_000_000
    tracemalloc.start()
    try:
        written = 0
        chunks = 0
        for chunk in exporting.account_zip(alice):
            written += len(chunk)
            chunks += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert chunks > 20 and written > 1_000_000
    # The ZIP holds every message twice (JSON and Markdown); the process held a sliver of it at a time.
    assert peak < 4_000_000, f"peak {peak / 1e6:.1f} MB while exporting {text_size / 1e6:.1f} MB of text"


@pytest.mark.django_db(transaction=True)
async def test_under_asgi_the_zip_is_sent_as_it_is_written(alice):
    from asgiref.sync import sync_to_async

    await sync_to_async(fill)(alice, 3, 400)
    client = AsyncClient()
    await client.aforce_login(alice)
    response = await client.get("/account/export/")
    assert response.status_code == 200 and response.is_async  # an async stream, not a list made first
    parts = [part async for part in response.streaming_content]
    assert len(parts) > 3
    archive = zipfile.ZipFile(io.BytesIO(b"".join(parts)))
    assert len(archive.namelist()) == 6
    doc = json.loads(archive.read(sorted(n for n in archive.namelist() if n.endswith(".json"))[0]))
    assert len(doc["messages"]) == 400
