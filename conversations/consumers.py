"""The conversation websocket: parse a frame, authorize, call a service, relay the group's events.

Every socket keeps, per reply, how much text its client already has, so the events it relays
join up exactly: `state` first, then deltas with repeats trimmed, whatever order they arrived in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeGuard

import orjson
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.http import Http404

from . import generation, presence, services, sockets, timing
from .generation import shutdown
from .models import Conversation, Message
from .pricing import usage_payload
from .selectors import active_path, conversation_for_user, path_summary, streaming_reply
from .services import ChatError

log = logging.getLogger(__name__)

# Close codes (4000-4999 are the application's): the page stops reconnecting on these and says why.
CLOSE_SIGNED_OUT = 4401
CLOSE_DELETED = 4404
DELETED = "This conversation was deleted."

# How long a socket waits for another process to describe its running reply.
REMOTE_STATE_TIMEOUT = 2.0

# The socket's database calls run on Channels' one shared thread (`database_sync_to_async`). Running
# them on the default pool's threads instead let sends overlap, but more threads contending for the
# GIL with the event loop made per-token p99 worse (191 ms -> 722 ms at 50 streams on PostgreSQL +
# Redis; docs/performance.md).


# `dispatch_many` drops what its frame holds as it ends (the benchmark's `cycles` variant sets this off).
BREAK_CYCLES = True


class _Turns:
    """What a socket's sources share in `dispatch_many`: the handler, the lock that lets one message
    be handled at a time, whether the loop has stopped (a handler raised), the sources' tasks, and a
    message handled at once outside the loop (`handle_now`) that is still being written. Slots, and no
    closure per socket: every open socket holds one."""

    __slots__ = ("dispatch", "lock", "stopped", "in_hand", "tasks", "error", "writing")

    def __init__(self, dispatch: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self.dispatch = dispatch
        self.lock = asyncio.Lock()
        self.stopped = False
        self.in_hand = 0  # messages taken from a source and not yet handled (waiting for the lock, or in it)
        self.tasks: list[asyncio.Task[None]] = []
        self.error: BaseException | None = None  # a failure of a message handled at once
        self.writing: asyncio.Future[None] | None = None

    def free(self) -> bool:
        """Whether a message may be handled at once: the loop runs and has nothing in hand. (Not the
        lock's state: released, it reads free until the task it hands over to runs, which may hold a
        message taken before the one offered now.)"""
        return not self.stopped and not self.in_hand and self.writing is None

    def handle_now(self, step: Coroutine[Any, Any, None]) -> None:
        """Run a handler's coroutine now, outside the loop (the caller checked `free`). Under daphne it
        ends at once: its send writes to the socket without waiting. A send that waits (uvicorn's, under
        flow control) is finished by a task, before the loop handles its next message; a failure ends
        the loop, as a handler's failure does."""
        try:
            waiting = step.send(None)
        except StopIteration:
            return
        except BaseException as exc:
            self.fail(exc)
            return
        self.writing = asyncio.ensure_future(self._finish(step, waiting))

    async def _finish(self, step: Coroutine[Any, Any, None], waiting: Any) -> None:
        try:
            await _Resumed(step, waiting)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.fail(exc)
        finally:
            self.writing = None

    def fail(self, exc: BaseException) -> None:
        """A message handled at once failed: the loop ends with its exception (`dispatch_many`)."""
        self.stopped = True
        if self.error is None:
            self.error = exc
        for task in self.tasks:
            task.cancel()

    async def pump(self, source: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        while True:
            message = await source()
            self.in_hand += 1
            try:
                async with self.lock:
                    if self.writing is not None:  # a message handled at once is still being written: first
                        await self.writing
                    if self.stopped:
                        return
                    try:
                        await self.dispatch(message)
                    except BaseException:
                        self.stopped = True
                        raise
            finally:
                self.in_hand -= 1


class _Resumed:
    """Awaits a started coroutine from where it waits (`waiting`, what its `send(None)` yielded) to its end."""

    __slots__ = ("step", "waiting")

    def __init__(self, step: Coroutine[Any, Any, None], waiting: Any) -> None:
        self.step, self.waiting = step, waiting

    def __await__(self) -> Generator[Any, None, None]:
        try:
            yield self.waiting
        except BaseException:
            self.step.close()
            raise
        return (yield from self.step.__await__())


async def dispatch_many(
    sources: list[Callable[[], Awaitable[dict[str, Any]]]],
    dispatch: Callable[[dict[str, Any]], Awaitable[None]],
    turns: _Turns | None = None,
) -> None:
    """Channels' `await_many_dispatch` without its cost per message: one long-lived task per source
    (the client's frames, the channel layer) hands each message to `dispatch`, one at a time (a lock,
    first come first served), in each source's order. Channels' loop makes a new task and runs
    `asyncio.wait` over the sources for every message, a relayed delta's included (docs/performance.md).
    `turns`: the socket's, when it also handles messages at once (`_Turns.handle_now`).

    Ends as Channels' loop does: with the first exception of a handler (`StopConsumer` on disconnect)
    or of a source, after which no message is handled; a source's failure lets a handler in progress
    finish first (a send is never cut between storing its message and starting its reply)."""
    if turns is None:
        turns = _Turns(dispatch)
    tasks = [asyncio.ensure_future(turns.pump(source)) for source in sources]
    turns.tasks = tasks
    done: set[asyncio.Future[None]] = set()
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        turns.stopped = True
        # A handler in progress (the other source's, or one handled at once) ends before the tasks are
        # cancelled below.
        await turns.lock.acquire()
        turns.lock.release()
        if turns.writing is not None:
            await turns.writing
        if turns.error is not None:
            raise turns.error
        for task in done:
            task.result()
    finally:
        turns.tasks = []
        for task in tasks:
            task.cancel()
        ended = await asyncio.gather(*tasks, return_exceptions=True)
        for task, outcome in zip(tasks, ended, strict=True):
            # A failure of a task not in `done` (rare: as it was cancelled) is logged; `done`'s is raised above.
            if task not in done and isinstance(outcome, Exception) and not isinstance(outcome, StopConsumer):
                log.error("a socket's other source failed as it closed", exc_info=outcome)
        if BREAK_CYCLES:
            # The exception raised from here (a disconnect's StopConsumer) keeps this frame in its
            # traceback, and the tasks this frame holds keep the exception: a cycle, through the socket's
            # consumer, that only the collector's older generations free, tens of milliseconds of a pause
            # at a time under load (chatsite/daphne_cycles.py). Dropped, the consumer is freed as it ends.
            del tasks, done, ended, task, outcome
            turns.error = None


@database_sync_to_async
def _conversation(session_key: str | None, conversation_id: str) -> Conversation | None:
    """The conversation, if the session signs in its owner: one trip to the database thread for both."""
    user = sockets.session_user(session_key)
    if user is None:
        return None
    try:
        return conversation_for_user(user, conversation_id)
    except Http404:
        return None


class SignedOut(Exception):
    """The socket's session no longer signs its user in (logged out, deactivated, password changed)."""


@database_sync_to_async
def _signed_in(session_key: str | None, user_id: int) -> bool:
    return sockets.signed_in(session_key, user_id)


@database_sync_to_async
def _send(
    session_key: str | None,
    conversation: Conversation,
    client_id: uuid.UUID,
    content: object,
    parent_id: int | None | str,
    edit_of: int | None,
    model: object = None,
    attachments: object = None,
    marks: timing.Marks | None = None,
) -> tuple[services.Sent, generation.Prepared | None]:
    """Store the message and open its reply; the reply's request is built in the same trip."""
    timing.mark(marks, "db_start")
    if not sockets.signed_in(session_key, conversation.owner_id):
        raise SignedOut
    sent = services.message_send(
        conversation=conversation,
        client_id=client_id,
        content=content,
        parent_id=parent_id,
        edit_of=edit_of,
        model=model,
        attachments=attachments,
    )
    timing.mark(marks, "stored")
    prepared = generation.prepare(sent.reply) if sent.reply is not None else None
    if prepared is not None:
        timing.mark(marks, "request")
    return sent, prepared


@database_sync_to_async
def _regenerate(
    session_key: str | None, conversation: Conversation, message_id: int | None
) -> tuple[Message, tuple[int, ...], generation.Prepared | None]:
    if not sockets.signed_in(session_key, conversation.owner_id):
        raise SignedOut
    reply, siblings = services.reply_regenerate(conversation=conversation, message_id=message_id)
    return reply, siblings, generation.prepare(reply)


@database_sync_to_async
def _switch(conversation: Conversation, message_id: object) -> dict[str, Any]:
    """The `path` event of the path made active: its messages and the summary it uses (or None)."""
    services.conversation_switch(conversation=conversation, message_id=message_id)
    path = active_path(conversation, summaries=True, files=True)
    summary = path_summary([p.message for p in path])
    return {
        "messages": [m.as_event() for m in path],
        "summary": {"through_id": summary.through_id, "text": summary.text} if summary else None,
    }


@database_sync_to_async
def _streaming(conversation_id: uuid.UUID) -> Message | None:
    return streaming_reply(conversation_id)


@database_sync_to_async
def _request_stop(conversation_id: uuid.UUID) -> int | None:
    return services.reply_stop_request(conversation_id=conversation_id)


@database_sync_to_async
def _message(conversation_id: uuid.UUID, message_id: int) -> Message | None:
    return Message.objects.filter(conversation_id=conversation_id, pk=message_id).first()


def _frame_type(frame: object) -> str:
    """The frame's `type` if it is an object with a string type, else "" (a list there must not crash us)."""
    kind = frame.get("type") if isinstance(frame, dict) else None
    return kind if isinstance(kind, str) else ""


_RESUME_MARK = '"resume"'

# Ids and offsets travel through the database and msgpack (Redis): keep them in a signed 64-bit range.
_MAX_ID = 2**63 - 1


def _is_id(value: object, lowest: int = 1) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and lowest <= value <= _MAX_ID


class RefusedConsumer(AsyncWebsocketConsumer):
    """Any other websocket path: refused at the handshake (no 500, no traceback)."""

    async def connect(self) -> None:
        await self.close()


class ChatConsumer(AsyncWebsocketConsumer):
    """One browser tab's socket on one conversation."""

    # The socket's conversation: only its id and owner (`thread()`); the services read the rest under
    # their lock. Keeping the row (and its persona) cost about a kilobyte a socket.
    conversation_id: uuid.UUID
    owner_id: int
    group: str
    counted_user: int | None  # the user whose socket count this socket holds (set once accepted)
    # The session cookie of the handshake: what the socket keeps of its session (checked on every send).
    session: str | None = None

    # Channels' own loop over the socket's two sources (`await_many_dispatch`); the benchmark's
    # `channels-dispatch` variant sets it, to measure `dispatch_many` against it.
    channels_dispatch = False

    # A relayed delta is handled at once when the socket's loop is free (`take_delta`); the benchmark's
    # `no-direct-deltas` variant sets this off.
    direct_deltas = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            if self.channels_dispatch:
                await super().__call__(scope, receive, send)
            else:
                await self._run(scope, receive, send)
        finally:
            # A consumer that ends without `disconnect` (an unexpected exception, a cancelled task)
            # still counts its socket out: a leaked count refuses the user's sockets for up to an hour.
            shutdown.sockets.discard(self)
            await self.count_out()

    async def _run(self, scope: Any, receive: Any, send: Any) -> None:
        """`AsyncConsumer.__call__` (Channels 4) with `dispatch_many` as its loop."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        sources = [receive]
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            sources.append(self.channel_receive)
        self.base_send = send
        self.turns: _Turns | None = _Turns(self.dispatch)
        try:
            with contextlib.suppress(StopConsumer):  # the disconnect's normal end
                await dispatch_many(sources, self.dispatch, self.turns)
        finally:
            self.stop_taking()
            self.turns = None  # it refers back to this consumer (its `dispatch`)

    def thread(self) -> Conversation:
        """The conversation as the services take it: its id and owner, the rest read under their lock."""
        return Conversation(pk=self.conversation_id, owner_id=self.owner_id)

    async def count_out(self) -> None:
        """Take this socket out of its user's count, once."""
        counted: int | None = getattr(self, "counted_user", None)
        if counted is not None:
            self.counted_user = None
            try:
                await presence.release(counted)
            except Exception:
                log.exception("could not count out a socket of user %s", counted)

    async def connect(self) -> None:
        # The socket reads its session itself (no AuthMiddlewareStack, chatsite/asgi.py) and keeps only
        # its key: not the session and user objects, nor the middleware's copies of the scope.
        self.session = sockets.handshake_session_key(self.scope)
        conversation = await _conversation(self.session, self.scope["url_route"]["kwargs"]["conversation_id"])
        if conversation is None or shutdown.draining:
            await self.close()  # refused at the handshake: no event, nothing learned
            return
        owner = conversation.owner_id
        if not await presence.claim(owner):
            log.warning("user %s has %s sockets open: one more refused", owner, settings.CHAT_MAX_SOCKETS_PER_USER)
            await self.close()
            return
        self.counted_user = owner
        self.conversation_id, self.owner_id = conversation.pk, owner
        self.group = generation.group_name(conversation.pk)
        self.offsets: dict[int, int] = {}  # reply id -> characters the client has
        self.held: list[dict[str, Any]] | None = []  # events held back until `state` is out
        self.frame_times: list[float] = []
        self.state_timer: asyncio.TimerHandle | None = None
        self.resumes: dict[int, asyncio.TimerHandle] = {}  # cross-process resumes in flight, by reply id
        self.resume_times: list[float] = []
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.channel_layer.group_add(sockets.user_group_name(owner), self.channel_name)
        if self.direct_deltas and getattr(self, "turns", None) is not None:
            takers = getattr(self.channel_layer, "takers", None)
            if takers is not None:
                takers[self.channel_name] = self.take_delta
        await self.accept()
        shutdown.sockets.add(self)
        # Every process with sockets sweeps for replies left by a dead process, not only those
        # that started a reply since they booted: else a socket could wait on one forever.
        generation.ensure_janitor()
        await self.send_state()

    async def disconnect(self, code: int) -> None:
        # A socket refused at the handshake never set up its state: nothing to clean.
        timer: asyncio.TimerHandle | None = getattr(self, "state_timer", None)
        if timer is not None:
            timer.cancel()
        for pending in getattr(self, "resumes", {}).values():
            pending.cancel()
        shutdown.sockets.discard(self)
        self.stop_taking()
        await self.count_out()
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await self.channel_layer.group_discard(sockets.user_group_name(self.owner_id), self.channel_name)

    # Whether the socket's own frames (connect, receive, disconnect) go through Channels' per-message
    # connection cleanup first; the benchmark's `frame-cleanup-hop` variant sets it.
    frame_cleanup_hop = False

    async def dispatch(self, message: dict[str, Any]) -> None:
        # No message goes through Channels' per-message connection cleanup: a hop to the one database
        # thread, so behind that thread's queue (a burst of sends) every frame waited there before its
        # handler began, unseen by the send's stage timings (docs/performance.md). Relayed events never
        # touch the database, and every database call of a frame's handler runs in
        # `database_sync_to_async`, which cleans connections up around itself.
        if message["type"].startswith("chat.") or not self.frame_cleanup_hop:
            handler = getattr(self, get_handler_name(message), None)
            if handler is None:
                raise ValueError(f"No handler for message type {message['type']}")
            await handler(message)
        else:
            await super().dispatch(message)

    # -- sending to the client -----------------------------------------------------------------
    async def send_json(self, content: dict[str, Any]) -> None:
        # Straight to the server's `send`: Channels' two `send` wrappers only build this message.
        await self.base_send({"type": "websocket.send", "text": orjson.dumps(content).decode()})

    async def answer(self, frame: dict[str, Any]) -> None:
        """An answer to the client's own frame: after `state`, like every other frame."""
        if self.held is not None:
            self.held.append(frame)
        else:
            await self.send_json(frame)

    async def send_error(self, code: str, message: str, retry_after: float | None = None) -> None:
        await self.answer({"type": "error", "code": code, "message": message, "retry_after": retry_after})

    async def relay(self, event: dict[str, Any]) -> None:
        """Send one event to the client, unless `state` is still to come, trimming repeated text."""
        if self.held is not None:
            self.held.append(event)
            return
        kind = event["type"]
        if kind == "delta":
            have = self.offsets.get(event["message_id"])
            if have is not None:
                end = event["offset"] + len(event["text"])
                if end <= have:
                    return  # already sent
                if event["offset"] < have:
                    event = {**event, "offset": have, "text": event["text"][have - event["offset"] :]}
            self.offsets[event["message_id"]] = event["offset"] + len(event["text"])
        elif kind == "start":
            self.offsets.setdefault(event["message_id"], 0)
        elif kind == "end":
            self.offsets.pop(event["message_id"], None)
        await self.send_json(event)

    async def send_state(self) -> None:
        """The first frame: the reply in progress, with its exact text so far."""
        running = generation.local(self.conversation_id)
        if running is not None:
            await self.release_state(running.snapshot())
            return
        await generation.interrupt_stale(self.conversation_id)
        reply = await _streaming(self.conversation_id)
        if reply is None:
            await self.release_state(None)
            return
        # Another process is writing it: ask it for the text, and fall back to the stored text.
        await self.ask_other_process(reply.pk, 0, "state")
        self.state_timer = asyncio.get_running_loop().call_later(
            REMOTE_STATE_TIMEOUT, lambda: generation.spawn(self.state_from_database())
        )

    async def release_state(self, generating: dict[str, Any] | None) -> None:
        if self.held is None:
            return
        if self.state_timer is not None:
            self.state_timer.cancel()
            self.state_timer = None
        held, self.held = self.held, None
        if generating is not None:
            generating = {**generating, "offset": len(generating["text"])}
            self.offsets[generating["message_id"]] = generating["offset"]
        await self.send_json({"type": "state", "generating": generating})
        for event in held:
            await self.relay(event)

    async def state_from_database(self) -> None:
        """No process answered for the running reply: use what the database holds."""
        if self.held is None:
            return
        reply = await _streaming(self.conversation_id)
        if reply is None:
            await self.release_state(None)
        else:
            await self.release_state({"message_id": reply.pk, "text": reply.content})

    async def ask_other_process(self, message_id: int, offset: int, purpose: str) -> None:
        await self.channel_layer.group_send(
            generation.control_group_name(self.conversation_id),
            {"type": "gen.snapshot", "reply_to": self.channel_name, "offset": offset, "purpose": purpose},
        )

    # -- frames from the client ------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        raw = text_data if text_data is not None else bytes_data or b""
        if text_data is not None and _RESUME_MARK in text_data[:200] and await self.take_resume(text_data):
            return
        # Every other frame counts against the rate, oversized and binary ones included.
        now = time.monotonic()
        self.frame_times = [t for t in self.frame_times if now - t < 10] + [now]
        if len(self.frame_times) > settings.CHAT_MAX_FRAMES_PER_10S:
            await self.send_error("rate_limited", "Too many frames: slow down.", 10.0)
            if len(self.frame_times) > 3 * settings.CHAT_MAX_FRAMES_PER_10S:
                await self.close(code=4008)
            return
        # The limit is in bytes: encode only when the characters alone do not settle it.
        limit = settings.CHAT_MAX_FRAME_BYTES
        size = len(raw)
        if isinstance(raw, str) and limit < size * 4:
            size = len(raw.encode("utf-8", "surrogatepass"))
        if size > limit:
            await self.send_error("invalid", "That frame is too large.")
            return
        if text_data is None:
            await self.send_error("invalid", "Frames must be JSON text, not binary.")
            return
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await self.send_error("invalid", "Frames must be JSON objects.")
            return
        handler = {
            "send": self.on_send,
            "stop": self.on_stop,
            "regenerate": self.on_regenerate,
            "resume": self.on_resume,
            "switch": self.on_switch,
        }.get(_frame_type(frame))
        if handler is None:
            await self.send_error("invalid", "Unknown frame type.")
            return
        try:
            await handler(frame)
        except ChatError as exc:
            await self.answer(exc.as_event())
        except SignedOut:
            await self.close(code=CLOSE_SIGNED_OUT)  # nothing stored; the page finds the login page
        except Exception:
            # Never a traceback and a 1011 close for the user: say so, keep the socket.
            log.exception("%s frame failed on conversation %s", _frame_type(frame), self.conversation_id)
            await self.send_error("unavailable", "Something went wrong on the server. Try again in a moment.")

    async def on_send(self, frame: dict[str, Any]) -> None:
        marks = timing.begin()
        try:
            client_id = uuid.UUID(str(frame.get("client_id")))
        except ValueError:
            raise ChatError("invalid", "`client_id` must be a UUID.") from None
        edit_of = frame.get("edit_of")
        if edit_of is not None and not _is_id(edit_of):
            raise ChatError("invalid", "`edit_of` must be a message id.")
        parent_id: int | None | str = services.FOLLOW_LEAF
        if "parent_id" in frame:
            parent_id = frame["parent_id"]
            if parent_id is not None and not _is_id(parent_id):
                raise ChatError("invalid", "`parent_id` must be a message id or null.")
        content, model, files = frame.get("content"), frame.get("model"), frame.get("attachments")
        sent, prepared = await _send(
            self.session_key(), self.thread(), client_id, content, parent_id, edit_of, model, files, marks
        )
        event: dict[str, Any] = {
            "type": "message",
            "message": sent.message.as_event(),
            "parent_id": sent.message.parent_id,
            "siblings": list(sent.siblings),
        }
        if sent.reply is None:  # a resend: answer it, start nothing
            await self.answer(event)
            return
        # The reply first: the row is committed, and a layer failure below must not leave it
        # `streaming` with nothing behind it. (`message` still goes out before `start`: the reply's
        # first event is sent only once this handler yields.)
        generation.start(sent.reply, owner_id=self.owner_id, siblings=(sent.reply.pk,), marks=marks, prepared=prepared)
        try:
            await self.channel_layer.group_send(self.group, {**event, "type": "chat.message"})
        except Exception:
            log.exception("could not publish message %s: the reply runs regardless", sent.message.pk)
            await self.answer(event)  # this socket, at least, learns that its message is stored
            await self.send_error(
                "unavailable",
                "Live updates are failing: your message is stored and the reply is being written. "
                "Reload to see it if it does not appear.",
            )

    async def on_stop(self, frame: dict[str, Any]) -> None:
        """Stop the running reply, wherever it runs, and acknowledge with `stopping`.

        In this process: at once. Elsewhere: the request is stored first (the reply's own process
        reads it on its next tick, and once when it starts listening), then published to the reply's
        control group (the fast path, which a reply still subscribing would miss).
        """
        running = generation.local(self.conversation_id)
        if running is not None:
            running.stop()
            await self.answer({"type": "stopping", "message_id": running.reply_id})
            return
        reply_id = await _request_stop(self.conversation_id)
        if reply_id is not None:
            try:
                await self.channel_layer.group_send(
                    generation.control_group_name(self.conversation_id), {"type": "gen.stop"}
                )
            except Exception:  # the stored request still reaches the reply
                log.exception("could not publish stop for reply %s", reply_id)
        await self.answer({"type": "stopping", "message_id": reply_id})

    async def on_regenerate(self, frame: dict[str, Any]) -> None:
        message_id = frame.get("message_id")
        if message_id is not None and not _is_id(message_id):
            raise ChatError("invalid", "`message_id` must be a reply's id.")
        reply, siblings, prepared = await _regenerate(self.session_key(), self.thread(), message_id)
        generation.start(reply, owner_id=self.owner_id, siblings=siblings, prepared=prepared)

    async def on_switch(self, frame: dict[str, Any]) -> None:
        """Make the path through a message active; every socket of the conversation gets the new path."""
        message_id = frame.get("message_id")
        if not _is_id(message_id):
            raise ChatError("invalid", "`switch` needs an integer `message_id`.")
        path = await _switch(self.thread(), message_id)
        await self.channel_layer.group_send(self.group, {"type": "chat.path", **path})

    async def take_resume(self, text_data: str) -> bool:
        """A `resume` has a budget of its own, so a client's own resumes never get its socket closed:
        one in flight per reply (repeats while it travels are dropped: its answer covers them), and
        past CHAT_MAX_FRAMES_PER_10S in 10 s they are dropped quietly. False: not a resume after all."""
        if len(text_data) > 1000:
            return False
        try:
            frame = orjson.loads(text_data)
        except orjson.JSONDecodeError:
            return False
        if _frame_type(frame) != "resume":
            return False
        now = time.monotonic()
        self.resume_times = [t for t in self.resume_times if now - t < 10]
        message_id = frame.get("message_id")
        if len(self.resume_times) >= settings.CHAT_MAX_FRAMES_PER_10S or (
            _is_id(message_id) and message_id in self.resumes  # an id of any JSON type: a list is unhashable
        ):
            return True
        self.resume_times.append(now)
        try:
            await self.on_resume(frame)
        except ChatError as exc:
            await self.answer(exc.as_event())
        except Exception:
            log.exception("resume failed on conversation %s", self.conversation_id)
            await self.send_error("unavailable", "Something went wrong on the server. Try again in a moment.")
        return True

    async def on_resume(self, frame: dict[str, Any]) -> None:
        message_id, offset = frame.get("message_id"), frame.get("offset")
        if not _is_id(message_id) or not _is_id(offset, lowest=0):
            raise ChatError("invalid", "`resume` needs integer `message_id` and `offset` >= 0.")
        running = generation.local(self.conversation_id)
        if running is not None and running.reply_id == message_id:
            await self.send_resumed(running.snapshot(min(offset, running.length)))
            return
        message = await _message(self.conversation_id, message_id)
        if message is None or message.role != Message.Role.ASSISTANT:
            raise ChatError("not_found", "No such reply in this conversation.")
        if message.status == Message.Status.STREAMING:
            # Another process writes it: ask it, and fall back to the stored text if it does not
            # answer in time (it may have died, or not be listening yet), as `state` does.
            self.resumes[message_id] = asyncio.get_running_loop().call_later(
                REMOTE_STATE_TIMEOUT, lambda: generation.spawn(self.resume_from_database(message_id, offset))
            )
            await self.ask_other_process(message_id, offset, "resume")
            return
        await self.resume_from_row(message, offset)

    async def resume_from_row(self, message: Message, offset: int) -> None:
        """The stored text from `offset` on; then, for a reply that has ended, its `end`."""
        await self.send_resumed({"message_id": message.pk, "offset": offset, "text": message.content[offset:]})
        if message.status == Message.Status.STREAMING:
            return  # live deltas follow
        await self.answer(
            {
                "type": "end",
                "message_id": message.pk,
                "status": message.status,
                "content": message.content,
                "usage": usage_payload(message),
            }
        )

    async def resume_from_database(self, message_id: int, offset: int) -> None:
        """No process answered a cross-process `resume` in time: use what the database holds."""
        if self.resumes.pop(message_id, None) is None:
            return  # answered meanwhile
        message = await _message(self.conversation_id, message_id)
        if message is not None:
            await self.resume_from_row(message, min(offset, len(message.content)))

    async def send_resumed(self, snapshot: dict[str, Any]) -> None:
        """The reply's text from the asked offset, as one delta; the socket's offset moves past it."""
        if self.held is not None:  # asked before `state` went out: trimmed against it like any delta
            self.held.append({"type": "delta", **snapshot})
            return
        end = snapshot["offset"] + len(snapshot["text"])
        # Never backwards: deltas relayed while the answer travelled are already out.
        self.offsets[snapshot["message_id"]] = max(end, self.offsets.get(snapshot["message_id"], 0))
        await self.send_json({"type": "delta", **snapshot})

    # -- events from the group (and from the process running the reply) -------------------------
    def session_key(self) -> str | None:
        return self.session

    async def chat_deleted(self, event: dict[str, Any]) -> None:
        """The conversation was deleted (in any process): say so and close."""
        await self.send_json({"type": "error", "code": "not_found", "message": DELETED, "retry_after": None})
        await self.close(code=CLOSE_DELETED)

    async def chat_recheck(self, event: dict[str, Any]) -> None:
        """The user signed out, was deactivated or deleted somewhere: close unless still signed in."""
        signed_out = event.get("session_key")
        if (signed_out and signed_out == self.session_key()) or not await _signed_in(self.session_key(), self.owner_id):
            await self.close(code=CLOSE_SIGNED_OUT)

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.relay({k: event[k] for k in ("message", "parent_id", "siblings")} | {"type": "message"})

    async def chat_start(self, event: dict[str, Any]) -> None:
        frame = {"type": "start", "message_id": event["message_id"], "model": event["model"]}
        frame["parent_id"] = event.get("parent_id")
        frame["siblings"] = event.get("siblings") or [event["message_id"]]
        await self.relay(frame)

    async def chat_path(self, event: dict[str, Any]) -> None:
        await self.relay({"type": "path", "messages": event["messages"], "summary": event.get("summary")})

    def stop_taking(self) -> None:
        """No more deltas handled at once (the socket is closing)."""
        takers = getattr(self.channel_layer, "takers", None) if hasattr(self, "channel_name") else None
        if takers:
            takers.pop(self.channel_name, None)

    def take_delta(self, event: dict[str, Any]) -> bool:
        """A delta of a reply of this process, offered by the layer before it queues it (layers/direct.py):
        handled now, as the socket's loop would handle it, if that loop has nothing in hand (the layer
        checked that nothing is queued). False: the layer queues it."""
        turns = self.turns
        if turns is None or not turns.free():
            return False
        turns.handle_now(self.chat_delta(event))
        return True

    async def chat_delta(self, event: dict[str, Any]) -> None:
        await self.relay(
            {"type": "delta", "message_id": event["message_id"], "offset": event["offset"], "text": event["text"]}
        )

    async def chat_end(self, event: dict[str, Any]) -> None:
        await self.relay({k: event[k] for k in ("message_id", "status", "content", "usage")} | {"type": "end"})

    async def chat_error(self, event: dict[str, Any]) -> None:
        await self.relay({k: event[k] for k in ("code", "message", "retry_after", "message_id")} | {"type": "error"})

    async def chat_retrying(self, event: dict[str, Any]) -> None:
        await self.relay({k: event[k] for k in ("message_id", "attempt", "retry_in", "code")} | {"type": "retrying"})

    async def chat_snapshot(self, event: dict[str, Any]) -> None:
        snapshot = {k: event[k] for k in ("message_id", "offset", "text")}
        if event.get("purpose") == "state":
            await self.release_state(snapshot)
        else:
            timer = self.resumes.pop(snapshot["message_id"], None)
            if timer is not None:
                timer.cancel()
            await self.send_resumed(snapshot)
