"""The one place that knows how a conversation's messages hang together (its tree and active path).

Export, import and share links read and write messages only through these functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from conversations import selectors
from conversations.models import Conversation, Message

ITER_CHUNK = 500


def active_path(conversation: Conversation) -> Iterator[Message]:
    """The messages of the active path, root to leaf: the path's ids in one recursive query
    (conversations.selectors), then its rows a chunk at a time (an export of a long path stays small)."""
    ids = selectors.path_ids(conversation.pk, conversation.active_leaf_id)
    for start in range(0, len(ids), ITER_CHUNK):
        chunk = ids[start : start + ITER_CHUNK]
        rows = {m.pk: m for m in Message.objects.filter(pk__in=chunk).only(*_FIELDS)}
        yield from (rows[i] for i in chunk)


def tree(conversation: Conversation) -> Iterator[tuple[Message, int | None]]:
    """Every message of the conversation, on every branch, with its parent's id, parents before children
    (a parent is always stored before its children, so id order is enough)."""
    for m in conversation.messages.order_by("id").iterator(chunk_size=ITER_CHUNK):
        yield m, m.parent_id


def active_leaf_id(conversation: Conversation) -> int | None:
    """The last message of the active path."""
    return conversation.active_leaf_id


_FIELDS = (
    "id",
    "conversation_id",
    "parent_id",
    "role",
    "content",
    "status",
    "model",
    "client_id",
    "error_code",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "cost",
    "created_at",
)


@dataclass
class Node:
    """A message read from an export, before it is stored. `key` and `parent` are the file's own ids."""

    key: str
    parent: str | None
    role: str
    content: str
    created_at: datetime | None = None
    status: str = Message.Status.COMPLETE
    model: str = ""
    usage: dict[str, Any] = field(default_factory=dict)


def store_tree(conversation: Conversation, nodes: list[Node], active_leaf: str | None) -> int:
    """Store `nodes` (parents before children) in `conversation`; the path to `active_leaf` is the one shown.

    Without a leaf, the newest leaf is active. Returns the number of messages stored.
    """
    if not nodes:
        return 0
    by_key = {n.key: n for n in nodes}
    if active_leaf not in by_key:
        parents = {n.parent for n in nodes}
        leaves = [n for n in nodes if n.key not in parents]
        active_leaf = leaves[-1].key if leaves else nodes[-1].key
    path: list[str] = []
    key: str | None = active_leaf
    while key is not None and key in by_key and key not in path:  # a cycle in a file ends the walk
        path.append(key)
        key = by_key[key].parent
    rows = [
        Message(
            conversation=conversation,
            role=n.role,
            content=n.content,
            status=n.status,
            model=n.model[:200],
            input_tokens=n.usage.get("input_tokens"),
            output_tokens=n.usage.get("output_tokens"),
            cached_input_tokens=n.usage.get("cached_input_tokens"),
            cache_write_tokens=n.usage.get("cache_write_tokens"),
            cost=n.usage.get("cost"),
        )
        for n in nodes
    ]
    # Parents first, so every parent has a lower id than its children (what `tree` relies on).
    Message.objects.bulk_create(rows, batch_size=ITER_CHUNK)
    row_of = {n.key: row for n, row in zip(nodes, rows, strict=True)}
    for n, row in zip(nodes, rows, strict=True):
        parent = row_of.get(n.parent) if n.parent is not None else None
        row.parent_id = parent.pk if parent is not None else None
        if parent is not None:
            parent.active_child_id = row.pk  # its newest child, unless the active path says otherwise
        if n.created_at is not None:
            row.created_at = n.created_at  # auto_now_add: the file's timestamps go in with the update
    for key in path:  # leaf to root: each message on the path continues along it
        parent_key = by_key[key].parent
        if parent_key in row_of:
            row_of[parent_key].active_child_id = row_of[key].pk
    Message.objects.bulk_update(rows, ["parent_id", "active_child_id", "created_at"], batch_size=ITER_CHUNK)
    Conversation.objects.filter(pk=conversation.pk).update(active_leaf_id=row_of[path[0]].pk)
    conversation.active_leaf_id = row_of[path[0]].pk
    return len(rows)
