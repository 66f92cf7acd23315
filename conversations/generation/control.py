"""A running reply answers requests from sockets in other processes (state, resume, stop) on its
control group."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer

from .flusher import stop_requested
from .groups import control_group_name
from .registry import spawn

if TYPE_CHECKING:
    from .reply import Generation

log = logging.getLogger(__package__)


def listen(generation: Generation) -> asyncio.Task[None] | None:
    """On a shared layer (Redis), answer state/resume/stop requests from other processes.

    Set up beside the reply, not before it: subscribing takes Redis round trips under
    channels-redis's shard lock, which under load held the first token back by most of a
    second. Until it is done, a socket of another process falls back to the stored text.
    """
    if isinstance(generation.layer, InMemoryChannelLayer):
        # One process: sockets read the registry directly, and every socket is this process's.
        generation.remote = not hasattr(generation.layer, "group_send_local")
        return None
    return spawn(_answer(generation))


async def _remote_listeners(generation: Generation) -> bool:
    ask = getattr(generation.layer, "remote_listeners", None)
    if ask is None or not hasattr(generation.layer, "group_send_local"):
        return True
    try:
        return bool(await ask(generation.group))
    except Exception:
        log.warning("reply %s cannot tell whether other processes listen: publishing", generation.reply_id)
        return True


async def _answer(generation: Generation) -> None:
    layer = generation.layer
    group = control_group_name(generation.conversation_id)
    channel = None
    try:
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
    except asyncio.CancelledError:
        if channel is not None:  # the reply ended while this was being set up
            spawn(layer.group_discard(group, channel))
        raise
    except Exception:
        log.exception("reply %s cannot listen for other processes", generation.reply_id)
        return
    try:
        # A `stop` published before this subscription was missed; its durable flag was stored before
        # it was published, so reading the flag now closes that gap.
        if await sync_to_async(stop_requested, thread_sensitive=False)(generation.reply_id):
            generation.stop()
        # Deltas go to this process's sockets only while no other process has one in the conversation.
        # Asked once this listener hears requests: a socket of another process that joins from now on
        # asks for the text (below), which turns publishing back on; one that joined before is counted.
        generation.remote = await _remote_listeners(generation)
        while True:
            message = await layer.receive(channel)
            if generation.over:
                # The reply has ended but the cancellation of this listener was swallowed
                # (redis-py can): answering now would describe a finished reply as running.
                break
            try:
                if message.get("type") == "gen.stop":
                    generation.stop()
                elif message.get("type") == "gen.snapshot" and message.get("reply_to"):
                    # A socket of another process listens from now on: publish every delta after
                    # the text this answer carries (it comes with the same step, nothing in between).
                    generation.remote = True
                    offset = min(int(message.get("offset") or 0), generation.length)
                    purpose = message.get("purpose", "state")
                    answer = {"type": "chat.snapshot", "purpose": purpose, **generation.snapshot(offset)}
                    await layer.send(message["reply_to"], answer)
            except Exception:  # one failed answer must not deafen the reply to the next `stop`
                log.exception("reply %s could not answer %s", generation.reply_id, message.get("type"))
    finally:
        await layer.group_discard(group, channel)
