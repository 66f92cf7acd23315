"""One batched database write a second for every reply running in the process (and a heartbeat,
so other processes can tell a live reply from an abandoned one); the same tick reads the durable
`stop` flag of every running reply, so a stop whose pub/sub message was lost still lands."""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from ..models import Message, quoted
from .registry import spawn

if TYPE_CHECKING:
    from .reply import Generation

log = logging.getLogger(__package__)


class _Flusher:
    def __init__(self) -> None:
        self.generations: set[Generation] = set()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        interval = settings.CHAT_FLUSH_INTERVAL
        heartbeat = max(interval, settings.CHAT_STALE_AFTER / 3)
        loop = asyncio.get_running_loop()
        while self.generations:
            await asyncio.sleep(interval)
            now = loop.time()
            watched = list(self.generations)
            if not watched:
                break
            batch = [g for g in watched if g.length != g.flushed_length or now - g.touched_at >= heartbeat]
            rows = [(g.reply_id, g.text()) for g in batch]
            try:
                gone, stop = await sync_to_async(_flush_rows, thread_sensitive=False)(
                    rows, [g.reply_id for g in watched]
                )
            except Exception:
                log.exception("flush of %s replies failed; retrying next interval", len(rows))
                continue
            for g, (_, text) in zip(batch, rows, strict=True):
                g.flushed_length = len(text)
                g.touched_at = now
            for g in watched:
                if g.reply_id in gone or g.reply_id in stop:
                    g.stop()


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = weakref.WeakKeyDictionary()


def flusher(generation: Generation) -> None:
    """Have this event loop's flusher write `generation`'s text until `unflush`."""
    f = _flushers.setdefault(asyncio.get_running_loop(), _Flusher())
    f.generations.add(generation)
    generation.touched_at = asyncio.get_running_loop().time()
    if f.task is None or f.task.done():
        f.task = spawn(f.run())


def unflush(generation: Generation) -> None:
    """The reply is over: its final write is its own."""
    f = _flushers.get(asyncio.get_running_loop())
    if f is not None:
        f.generations.discard(generation)


def _flush_rows(rows: list[tuple[int, str]], watched: list[int]) -> tuple[set[int], set[int]]:
    """Write every reply's text in one transaction; then, of the `watched` replies, (the ids no longer
    streaming or gone, the ids someone asked to stop from any process)."""
    close_old_connections()
    if rows:
        now = Message._meta.get_field("updated_at").get_db_prep_value(timezone.now(), connection)
        with transaction.atomic(), connection.cursor() as cursor:
            # One statement for every row (psycopg pipelines `executemany`; SQLite loops in C): through
            # the ORM each row was an UPDATE compiled anew, at N = 200 two hundred a second.
            cursor.executemany(_flush_sql(), [(text, now, reply_id) for reply_id, text in rows])
    streaming = set()
    stop = set()
    for reply_id, stop_requested in Message.objects.filter(pk__in=watched, status=Message.Status.STREAMING).values_list(
        "pk", "stop_requested"
    ):
        streaming.add(reply_id)
        if stop_requested:
            stop.add(reply_id)
    return set(watched) - streaming, stop


def stop_requested(reply_id: int) -> bool:
    """Whether `stop` was asked for this reply from any process (the durable flag). The caller has
    checked its thread's connection (`close_old_connections`) at the start of its database call: doing
    it again here would cost PostgreSQL a second health check's `SELECT 1`. (A send's build reads the
    flag with its path instead: `selectors.PathHistory.leaf_stop_requested`.)"""
    with connection.cursor() as cursor:
        cursor.execute(_stop_sql(), [reply_id])
        return cursor.fetchone() is not None


@functools.cache
def _stop_sql() -> str:
    """`stop_requested`'s read, plain (the ORM's `exists()` cost more to compile than to run). Params: the id."""
    return (
        f"SELECT 1 FROM {connection.ops.quote_name(Message._meta.db_table)}"  # noqa: S608 - names from the model
        f" WHERE {quoted(Message, 'pk')} = %s AND {quoted(Message, 'stop_requested')}"
    )


@functools.cache
def _flush_sql() -> str:
    """A reply's text written while it still streams. Params: the text, now, the reply's id."""
    return (
        f"UPDATE {connection.ops.quote_name(Message._meta.db_table)}"  # noqa: S608 - names from the model
        f" SET {quoted(Message, 'content')} = %s, {quoted(Message, 'updated_at')} = %s"
        f" WHERE {quoted(Message, 'pk')} = %s AND {quoted(Message, 'status')} = '{Message.Status.STREAMING}'"
    )
