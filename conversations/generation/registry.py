"""The replies running in this process, by conversation, and the detached tasks that run them."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .reply import Generation

# Replies running in this process, by conversation id.
running: dict[uuid.UUID, Generation] = {}
# Strong references: the event loop keeps only weak ones to tasks.
_tasks: set[asyncio.Task[Any]] = set()


def local(conversation_id: uuid.UUID) -> Generation | None:
    """The reply running in this process for this conversation, if any."""
    return running.get(conversation_id)


def spawn(coro: Any) -> asyncio.Task[Any]:
    """Run a coroutine detached from its caller, keeping a reference until it ends."""
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task
