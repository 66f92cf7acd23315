"""Replies whose process died (rows left `streaming` that nobody writes) are marked `interrupted`,
and their sockets told."""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections

from .. import services
from ..models import Message
from ..pricing import usage_payload
from .groups import group_name
from .registry import running, spawn

log = logging.getLogger(__package__)

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
    own = [g.reply_id for g in running.values()]
    for message in await sync_to_async(_interrupt_rows, thread_sensitive=False)(conversation_id, own):
        log.warning("reply %s was left streaming by a dead process: interrupted", message.pk)
        await layer.group_send(
            group_name(message.conversation_id),
            {
                "type": "chat.end",
                "message_id": message.pk,
                "status": message.status,
                "content": message.content,
                "usage": usage_payload(None),
            },
        )


def _interrupt_rows(conversation_id: uuid.UUID | None, own: list[int]) -> list[Message]:
    close_old_connections()
    return services.replies_interrupt_stale(conversation_id=conversation_id, exclude_ids=own)
