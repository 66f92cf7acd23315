"""One reply being written (`Generation`): from `start`, through the provider's stream (retried before
the first token), to its stored end and the `end` event every socket gets."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections

from .. import services, timing
from ..context import estimate_tokens
from ..history import Followups, ReadsFiles, build_for, build_for_reply, reply_path, trimmed
from ..llm import ChatRequest, ProviderError, Usage, provider_for
from ..llm.base import within_gap
from ..models import Message
from ..pricing import usage_payload
from . import control, registry
from .flusher import flusher, stop_requested, unflush
from .groups import group_name
from .janitor import ensure_janitor
from .registry import spawn
from .retry import backoff

log = logging.getLogger(__package__)

# A send builds its reply's request in the same trip to the database thread that stored it (see
# `prepare`); the benchmark's `no-send-build` variant sets this off (docs/performance.md).
BUILD_IN_SEND = True

# The request, what the reply's end may call for, and whether a `stop` was stored meanwhile.
Prepared = tuple[ChatRequest, Followups, bool]


def prepare(reply: Message) -> Prepared | None:
    """The request for a reply just opened, built where it was opened (the send's trip to the database
    thread: one trip instead of two, and the reply's row is not read back). None where the reply builds
    its own: a path with files (read from the storage, which must not hold the socket's one database
    thread) or a failure (which the reply then meets itself and reports as its error)."""
    if not BUILD_IN_SEND:
        return None
    try:
        # The path comes with the reply's stop flag: a stop stored since the row was committed (from
        # another process) calls no provider.
        history = reply_path(reply)
        request, followups = build_for(reply, files=False, history=history)
        return request, followups, history.leaf_stop_requested
    except ReadsFiles:
        return None
    except Exception:
        log.exception("could not build the request of reply %s with its send", reply.pk)
        return None


def start(
    reply: Message,
    *,
    owner_id: int | None = None,
    siblings: tuple[int, ...] = (),
    marks: timing.Marks | None = None,
    prepared: Prepared | None = None,
) -> Generation:
    """Start generating `reply` (a streaming row just created) in this process; `owner_id` (the
    conversation's owner, for the quota counter) saves a lookup at the end; `marks`: the send's stage
    timings, when the benchmark asks for them (timing.py); `prepared`: its request, when the send
    built it (`prepare`)."""
    generation = Generation(reply, owner_id=owner_id, siblings=siblings or (reply.pk,))
    generation.marks = marks
    generation.prepared = prepared
    registry.running[reply.conversation_id] = generation
    generation.task = spawn(generation.run())
    ensure_janitor()
    return generation


class Generation:
    """One reply being written: its text so far, its status, and how to stop it."""

    def __init__(self, reply: Message, *, owner_id: int | None = None, siblings: tuple[int, ...]) -> None:
        self.reply_id: int = reply.pk
        self.conversation_id: uuid.UUID = reply.conversation_id
        self.model = reply.model
        self.owner_id = owner_id  # None: looked up when the reply is stored
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
        self._interrupting = False  # the process is shutting down (see shutdown.py)
        self.task: asyncio.Task[None] | None = None  # the task running `run`
        self.over = False  # set once the outcome is decided: other processes' requests go unanswered
        self._stream_task: asyncio.Task[None] | None = None
        self.layer = get_channel_layer()
        # Whether a socket of another process may be listening: until the layer says none is, every
        # delta is published; while none is, deltas go to this process's sockets only (control.py).
        self.remote = True
        self.marks: timing.Marks | None = None  # stage timings of the send (timing.py), when on
        self.prepared: Prepared | None = None  # the request, when the send built it

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
        self._cancel_stream()

    def interrupt(self) -> None:
        """End the reply now because the process is shutting down: status `interrupted`, text kept."""
        if not self._stopping:
            self._interrupting = True
        self._cancel_stream()

    def _cancel_stream(self) -> None:
        if self._stream_task is not None and not self._stream_task.done():
            self._stream_task.cancel()
            # redis-py can swallow a cancellation that lands inside a command (a delta's
            # group_send): insist until the stream has really ended.
            asyncio.get_running_loop().call_later(0.1, self._cancel_stream)

    async def send(self, event: dict[str, Any]) -> None:
        """An event to every socket of the conversation; a layer failure never stops the reply."""
        try:
            await self.layer.group_send(self.group, event)
        except Exception:
            log.exception("could not send %s for reply %s", event["type"], self.reply_id)

    def send_delta(self, event: dict[str, Any]) -> None:
        """A delta to this process's sockets only (no other process listens)."""
        try:
            self.layer.group_send_local(self.group, event)
        except Exception:
            log.exception("could not send a delta of reply %s", self.reply_id)

    # -- running --------------------------------------------------------------------------
    async def run(self) -> None:
        """Generate, then store the outcome and tell every socket."""
        timing.mark(self.marks, "task")
        listener = control.listen(self)
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
            if self.prepared is not None:  # built by the send, right after it stored the reply
                self.request, self.followups, stop_asked = self.prepared
                self.prepared = None
            else:
                self.request, self.followups, stop_asked = await sync_to_async(_build_request, thread_sensitive=False)(
                    self.reply_id
                )
            timing.mark(self.marks, "request")
            if stop_asked:  # a `stop` that came before this reply's process could hear it
                self._stopping = True
            if self._stopping:
                status = Message.Status.STOPPED
            elif self._interrupting:
                status = Message.Status.INTERRUPTED
            else:
                self._stream_task = asyncio.ensure_future(self._stream(self.request))
                await self._stream_task
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
            self.over = True
            if listener is not None:
                listener.cancel()
            await self._finish(status, error)

    async def _stream(self, request: ChatRequest) -> None:
        """Read the provider's stream into the buffer; retry before the first token."""
        provider, _ = await provider_for(self.model)
        attempt = 0
        trimmed_once = False
        while True:
            timing.mark(self.marks, "provider")
            try:
                async for item in within_gap(provider.stream(request), settings.CHAT_READ_TIMEOUT):
                    if isinstance(item, Usage):
                        self.usage = item
                        continue
                    offset = self.length
                    self.chunks.append(item)
                    self.length += len(item)
                    marks = self.marks  # the send's stage timings, until its first token is out
                    timing.mark(marks, "first_token")
                    delta = {"type": "chat.delta", "message_id": self.reply_id, "offset": offset, "text": item}
                    if self.remote:
                        await self.send(delta)
                    else:
                        self.send_delta(delta)
                    if marks is not None:
                        timing.mark(marks, "published")
                        timing.report(marks, self.reply_id)
                        self.marks = None
                    if self._stopping or self._interrupting:  # though the cancellation itself got lost
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
        # Estimates stand in only for counts the provider did not give (a stopped reply, say): the
        # request's is a pass over its whole history, on the event loop.
        estimates = (
            0 if usage.input_tokens else _estimate_input(self.request),
            0 if usage.output_tokens else estimate_tokens(text),
        )
        quota_tokens = (usage.input_tokens or estimates[0]) + (usage.output_tokens or estimates[1])
        stored = None
        for attempt in range(3):
            try:
                stored = await sync_to_async(_finish_row, thread_sensitive=False)(
                    self,
                    text,
                    status,
                    usage,
                    error.code if error else "",
                    quota_tokens,
                    estimates,
                )
                break
            except Exception:
                log.exception("could not store reply %s (attempt %s)", self.reply_id, attempt + 1)
                await asyncio.sleep(0.5 * (attempt + 1))
        if registry.running.get(self.conversation_id) is self:
            del registry.running[self.conversation_id]
        if stored is None:
            if await sync_to_async(_row_exists, thread_sensitive=False)(self.reply_id):
                # Another process closed it (it judged this one dead); its `end` went out already.
                return
            # The conversation was deleted under the reply: its sockets still get the end of it.
            status, error = Message.Status.STOPPED, None
        await self.send(
            {
                "type": "chat.end",
                "message_id": self.reply_id,
                "status": status,
                "content": text,
                "usage": usage_payload(stored),
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
        if stored is None:
            return  # deleted: nothing to summarize or title
        reply_tokens = usage.output_tokens or estimates[1]
        if status in (Message.Status.COMPLETE, Message.Status.STOPPED) and (
            self.followups is None or self.followups.may_need_work(reply_tokens)
        ):
            try:
                await sync_to_async(_after_reply, thread_sensitive=False)(self.conversation_id, self.reply_id)
            except Exception:
                log.exception("could not schedule background work for %s", self.conversation_id)


def _estimate_input(request: ChatRequest | None) -> int:
    if request is None:
        return 0
    return estimate_tokens(request.system) + sum(estimate_tokens(m["content"]) for m in request.messages)


def _build_request(reply_id: int) -> tuple[ChatRequest, Followups, bool]:
    close_old_connections()
    request, followups = build_for_reply(reply_id)
    return request, followups, stop_requested(reply_id)


def _finish_row(
    generation: Generation,
    text: str,
    status: str,
    usage: Usage,
    error_code: str,
    quota_tokens: int,
    estimates: tuple[int, int],
) -> Message | None:
    close_old_connections()
    return services.reply_finish(
        reply_id=generation.reply_id,
        owner_id=generation.owner_id,
        model=generation.model,
        conversation_id=generation.conversation_id,
        content=text,
        status=status,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        estimated_input_tokens=estimates[0],
        estimated_output_tokens=estimates[1],
        error_code=error_code,
        quota_tokens=quota_tokens,
    )


def _row_exists(reply_id: int) -> bool:
    close_old_connections()
    return Message.objects.filter(pk=reply_id).exists()


def _after_reply(conversation_id: uuid.UUID, reply_id: int) -> None:
    from ..tasks import after_reply

    after_reply(conversation_id, leaf_id=reply_id)
