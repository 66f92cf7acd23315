"""Runs replies: provider stream -> in-memory buffer -> group events; the text reaches the database
about once a second (one batched write for every reply of the process) and at the end.

A reply is an asyncio task of its own, not part of any socket: closing a tab does not stop it,
only `stop` does. Sockets in this process read its text straight from the registry; sockets in
other processes ask it over the channel layer (its control group).

One sentence per module:
- groups.py: the channel-layer group names of a conversation.
- registry.py: the replies running in this process, by conversation, and detached tasks.
- reply.py: one reply being written (`Generation`), from `start` to its stored end.
- retry.py: how long to wait before asking the provider again.
- control.py: a running reply answers requests from other processes (its control group).
- flusher.py: one batched database write a second for every reply in the process.
- janitor.py: replies whose process died are marked `interrupted`.
"""

from __future__ import annotations

from .groups import control_group_name, group_name
from .janitor import ensure_janitor, interrupt_stale
from .registry import local, spawn
from .reply import Generation, Prepared, prepare, start
from .retry import backoff

__all__ = [
    "Generation",
    "Prepared",
    "backoff",
    "control_group_name",
    "ensure_janitor",
    "group_name",
    "interrupt_stale",
    "local",
    "prepare",
    "spawn",
    "start",
]
