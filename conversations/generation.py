"""Runs one reply: provider stream -> in-memory buffer -> group events; the text reaches the database
about once a second (one batched write for every reply of the process) and at the end.

A reply is an asyncio task of its own, not part of any socket: closing a tab does not stop it,
only `stop` does. Sockets in this process read its text straight from the registry; sockets in
other processes ask it over the channel layer (its control group).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
import weakref
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone

from . import services
from .context import estimate_tokens
from .history import Followups, build_for_reply, trimmed
from .llm import ChatRequest, ProviderError, Usage, provider_for
from .llm.base import within_gap
from .models import Message

log = logging.getLogger(__name__)

# Replies running in this process, by conversation id.
_running: dict[uuid.UUID, Generation] = {}
# Strong references: the event loop keeps only weak ones to tasks.
_tasks: set[asyncio.Task[Any]] = set()


def group_name(conversation_id: uuid.UUID) -> str:
    """Every socket of a conversation listens on this group."""
    return f"conv.{conversation_id.hex}"


def control_group_name(conversation_id: uuid.UUID) -> str:
    """The running reply of a conversation listens here for requests from other processes."""
    return f"ctl.{conversation_id.hex}"


def local(conversation_id: uuid.UUID) -> Generation | None:
    """The reply running in this process for this conversation, if any."""
    return _running.get(conversation_id)


def spawn(coro: Any) -> asyncio.Task[Any]:
    """Run a coroutine detached from its caller, keeping a reference until it ends."""
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


def start(reply: Message, *, siblings: tuple[int, ...] = ()) -> Generation:
    """Start generating `reply` (a streaming row just created) in this process."""
    generation = Generation(reply, siblings=siblings or (reply.pk,))
    _running[reply.conversation_id] = generation
    spawn(generation.run())
    ensure_janitor()
    return generation


def backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with jitter (between half and all of the ceiling), or the provider's
    Retry-After when it gives one."""
    if retry_after is not None:
        return min(retry_after, settings.CHAT_RETRY_MAX_DELAY)
    ceiling = min(settings.CHAT_RETRY_MAX_DELAY, settings.CHAT_RETRY_BASE_DELAY * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto


class Generation:
    """One reply being written: its text so far, its status, and how to stop it."""

    def __init__(self, reply: Message, *, siblings: tuple[int, ...]) -> None:
        self.reply_id: int = reply.pk
        self.conversation_id: uuid.UUID = reply.conversation_id
        self.model = reply.model
        # The owner, for the quota counter, when the reply came with its conversation (it does from
        # the services); else the row is looked up at the end.
        conversation = reply._state.fields_cache.get("conversation")
        self.owner_id: int | None = conversation.owner_id if conversation is not None else None
        # Where the reply sits in the tree: the `start` event tells every page.
        self.parent_id: int | None = reply.parent_id
        self.siblings = list(siblings)
        self.group = group_name(self.conversation_id)
        self.chunks: list[str] = []
        self.length = 0
        self._joined = ""
        self.usage = Usage()
        self.flushed_length = 0
        self.touched_at = 0.0
        self.request: ChatRequest | None = None
        self.followups: Followups | None = None
        self._stopping = False
        self._over = False  # set once the outcome is decided: other processes' requests go unanswered
        self._stream_task: asyncio.Task[None] | None = None
        self.layer = get_channel_layer()

    # -- reading ------------------------------------------------------------------------
    def text(self) -> str:
        """The reply's text so far (joined lazily: only flushes and late joiners need it)."""
        if len(self._joined) != self.length:
            self._joined = "".join(self.chunks)
            self.chunks = [self._joined]
        return self._joined

    def snapshot(self, offset: int = 0) -> dict[str, Any]:
        """The text from `offset` on, as the protocol's `generating`/`delta` payload."""
        return {"message_id": self.reply_id, "offset": offset, "text": self.text()[offset:]}

    # -- control --------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the reply; what was streamed is kept with status `stopped`."""
        self._stopping = True
        if self._stream_task is not None and not self._stream_task.done():
            self._stream_task.cancel()
            # redis-py can swallow a cancellation that lands inside a command (a delta's
            # group_send): insist until the stream has really ended.
            asyncio.get_running_loop().call_later(0.1, self.stop)

    async def send(self, event: dict[str, Any]) -> None:
        """An event to every socket of the conversation; a layer failure never stops the reply."""
        try:
            await self.layer.group_send(self.group, event)
        except Exception:
            log.exception("could not send %s for reply %s", event["type"], self.reply_id)

    # -- running --------------------------------------------------------------------------
    async def run(self) -> None:
        """Generate, then store the outcome and tell every socket."""
        listener = self._listen_for_other_processes()
        flusher(self)
        status, error = Message.Status.COMPLETE, None
        try:
            await self.send(
                {
                    "type": "chat.start",
                    "message_id": self.reply_id,
                    "model": self.model,
                    "parent_id": self.parent_id,
                    "siblings": self.siblings,
                }
            )
            self.request, self.followups = await sync_to_async(_build_request, thread_sensitive=False)(self.reply_id)
            if not self._stopping:
                self._stream_task = asyncio.ensure_future(self._stream(self.request))
                await self._stream_task
            else:
                status = Message.Status.STOPPED
        except asyncio.CancelledError:
            # Cancelled without `stop`: the server is shutting down under us.
            status = Message.Status.STOPPED if self._stopping else Message.Status.INTERRUPTED
        except ProviderError as exc:
            status, error = Message.Status.ERROR, exc
            log.warning("reply %s failed: %r", self.reply_id, exc)
        except Exception as exc:
            log.exception("reply %s crashed", self.reply_id)
            status = Message.Status.ERROR
            error = ProviderError("provider_unavailable", f"The reply failed ({type(exc).__name__}).")
        finally:
            unflush(self)
            self._over = True
            if listener is not None:
                listener.cancel()
            await self._finish(status, error)

    async def _stream(self, request: ChatRequest) -> None:
        """Read the provider's stream into the buffer; retry before the first token."""
        provider, _ = provider_for(self.model)
        attempt = 0
        trimmed_once = False
        while True:
            try:
                async for item in within_gap(provider.stream(request), settings.CHAT_READ_TIMEOUT):
                    if isinstance(item, Usage):
                        self.usage = item
                        continue
                    offset = self.length
                    self.chunks.append(item)
                    self.length += len(item)
                    await self.send({"type": "chat.delta", "message_id": self.reply_id, "offset": offset, "text": item})
                    if self._stopping:  # stopped, though the cancellation itself got lost
                        raise asyncio.CancelledError
                return
            except ProviderError as exc:
                if self.length:
                    raise
                if exc.code == "context_too_long" and not trimmed_once and len(request.messages) > 1:
                    trimmed_once = True
                    request = trimmed(request)
                    continue
                if not exc.retryable or attempt >= settings.CHAT_PROVIDER_RETRIES:
                    raise
                if exc.retry_after is not None and exc.retry_after > settings.CHAT_RETRY_MAX_DELAY:
                    raise  # longer than we hold a reply open: the error tells the user when to try again
                attempt += 1
                delay = backoff(attempt, exc.retry_after)
                log.info("reply %s: %s, retry %s in %.1fs", self.reply_id, exc.code, attempt, delay)
                await self.send(
                    {
                        "type": "chat.retrying",
                        "message_id": self.reply_id,
                        "attempt": attempt,
                        "retry_in": round(delay, 2),
                        "code": exc.code,
                    }
                )
                await asyncio.sleep(delay)

    async def _finish(self, status: str, error: ProviderError | None) -> None:
        text = self.text()
        usage = self.usage
        quota_tokens = (usage.input_tokens or _estimate_input(self.request)) + (
            usage.output_tokens or estimate_tokens(text)
        )
        stored = False
        for attempt in range(3):
            try:
                stored = await sync_to_async(_finish_row, thread_sensitive=False)(
                    self.reply_id, self.owner_id, text, status, usage, error.code if error else "", quota_tokens
                )
                break
            except Exception:
                log.exception("could not store reply %s (attempt %s)", self.reply_id, attempt + 1)
                await asyncio.sleep(0.5 * (attempt + 1))
        if _running.get(self.conversation_id) is self:
            del _running[self.conversation_id]
        if not stored:
            # Another process closed it (it judged this one dead); its `end` went out already.
            return
        await self.send(
            {
                "type": "chat.end",
                "message_id": self.reply_id,
                "status": status,
                "content": text,
                "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
            }
        )
        if error is not None:
            await self.send(
                {
                    "type": "chat.error",
                    "code": error.code,
                    "message": error.message,
                    "retry_after": error.retry_after,
                    "message_id": self.reply_id,
                }
            )
        reply_tokens = usage.output_tokens or estimate_tokens(text)
        if status in (Message.Status.COMPLETE, Message.Status.STOPPED) and (
            self.followups is None or self.followups.may_need_work(reply_tokens)
        ):
            try:
                await sync_to_async(_after_reply, thread_sensitive=False)(self.conversation_id, self.reply_id)
            except Exception:
                log.exception("could not schedule background work for %s", self.conversation_id)

    def _listen_for_other_processes(self) -> asyncio.Task[None] | None:
        """On a shared layer (Redis), answer state/resume/stop requests from other processes.

        Set up beside the reply, not before it: subscribing takes Redis round trips under
        channels-redis's shard lock, which under load held the first token back by most of a
        second. Until it is done, a socket of another process falls back to the stored text.
        """
        if isinstance(self.layer, InMemoryChannelLayer):
            return None  # one process: sockets read the registry directly
        return spawn(self._answer())

    async def _answer(self) -> None:
        group = control_group_name(self.conversation_id)
        channel = None
        try:
            channel = await self.layer.new_channel()
            await self.layer.group_add(group, channel)
        except asyncio.CancelledError:
            if channel is not None:  # the reply ended while this was being set up
                spawn(self.layer.group_discard(group, channel))
            raise
        except Exception:
            log.exception("reply %s cannot listen for other processes", self.reply_id)
            return
        try:
            while True:
                message = await self.layer.receive(channel)
                if self._over:
                    # The reply has ended but the cancellation of this listener was swallowed
                    # (redis-py can): answering now would describe a finished reply as running.
                    break
                try:
                    if message.get("type") == "gen.stop":
                        self.stop()
                    elif message.get("type") == "gen.snapshot" and message.get("reply_to"):
                        offset = min(int(message.get("offset") or 0), self.length)
                        purpose = message.get("purpose", "state")
                        await self.layer.send(
                            message["reply_to"], {"type": "chat.snapshot", "purpose": purpose, **self.snapshot(offset)}
                        )
                except Exception:  # one failed answer must not deafen the reply to the next `stop`
                    log.exception("reply %s could not answer %s", self.reply_id, message.get("type"))
        finally:
            await self.layer.group_discard(group, channel)


def _estimate_input(request: ChatRequest | None) -> int:
    if request is None:
        return 0
    return estimate_tokens(request.system) + sum(estimate_tokens(m["content"]) for m in request.messages)


def _build_request(reply_id: int) -> tuple[ChatRequest, Followups]:
    close_old_connections()
    return build_for_reply(reply_id)


def _finish_row(
    reply_id: int, owner_id: int | None, text: str, status: str, usage: Usage, error_code: str, quota_tokens: int
) -> bool:
    close_old_connections()
    return services.reply_finish(
        reply_id=reply_id,
        owner_id=owner_id,
        content=text,
        status=status,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        error_code=error_code,
        quota_tokens=quota_tokens,
    )


def _after_reply(conversation_id: uuid.UUID, reply_id: int) -> None:
    from .tasks import after_reply

    after_reply(conversation_id, leaf_id=reply_id)


# -- the flusher: one batched write a second for every reply in the process ----------------
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
            batch = [
                g for g in list(self.generations) if g.length != g.flushed_length or now - g.touched_at >= heartbeat
            ]
            if not batch:
                continue
            rows = [(g.reply_id, g.text()) for g in batch]
            try:
                gone = await sync_to_async(_flush_rows, thread_sensitive=False)(rows)
            except Exception:
                log.exception("flush of %s replies failed; retrying next interval", len(rows))
                continue
            for g, (_, text) in zip(batch, rows, strict=True):
                g.flushed_length = len(text)
                g.touched_at = now
                if g.reply_id in gone:
                    g.stop()


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = weakref.WeakKeyDictionary()


def flusher(generation: Generation) -> None:
    f = _flushers.setdefault(asyncio.get_running_loop(), _Flusher())
    f.generations.add(generation)
    generation.touched_at = asyncio.get_running_loop().time()
    if f.task is None or f.task.done():
        f.task = spawn(f.run())


def unflush(generation: Generation) -> None:
    f = _flushers.get(asyncio.get_running_loop())
    if f is not None:
        f.generations.discard(generation)


def _flush_rows(rows: list[tuple[int, str]]) -> set[int]:
    """Write every reply's text in one transaction; the ids no longer streaming."""
    close_old_connections()
    gone = set()
    now = timezone.now()
    with transaction.atomic():
        for reply_id, text in rows:
            if not Message.objects.filter(pk=reply_id, status=Message.Status.STREAMING).update(
                content=text, updated_at=now
            ):
                gone.add(reply_id)
    return gone


# -- the janitor: replies whose process died are marked `interrupted` ------------------------
_janitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = weakref.WeakKeyDictionary()


def ensure_janitor() -> None:
    """Start this event loop's sweep of stale replies, once."""
    loop = asyncio.get_running_loop()
    task = _janitors.get(loop)
    if task is None or task.done():
        _janitors[loop] = spawn(_janitor())


async def _janitor() -> None:
    while True:
        await asyncio.sleep(settings.CHAT_STALE_AFTER)
        try:
            await interrupt_stale()
        except Exception:
            log.exception("sweep of stale replies failed")


async def interrupt_stale(conversation_id: uuid.UUID | None = None) -> None:
    """Mark replies whose process stopped writing them `interrupted`, and tell their sockets."""
    layer = get_channel_layer()
    # Never this process's own running replies: their `end` comes from their task.
    own = [g.reply_id for g in _running.values()]
    for message in await sync_to_async(_interrupt_rows, thread_sensitive=False)(conversation_id, own):
        log.warning("reply %s was left streaming by a dead process: interrupted", message.pk)
        await layer.group_send(
            group_name(message.conversation_id),
            {
                "type": "chat.end",
                "message_id": message.pk,
                "status": message.status,
                "content": message.content,
                "usage": {"input_tokens": None, "output_tokens": None},
            },
        )


def _interrupt_rows(conversation_id: uuid.UUID | None, own: list[int]) -> list[Message]:
    close_old_connections()
    return services.replies_interrupt_stale(conversation_id=conversation_id, exclude_ids=own)
