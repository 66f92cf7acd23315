"""The one place that knows how a conversation's messages hang together (its tree and active path).

Export, import and share links read and write messages only through these functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from conversations.models import Conversation, Message

ITER_CHUNK = 500


def active_path(conversation: Conversation) -> Iterator[Message]:
    """The messages of the active path, root to leaf, read a chunk at a time."""
    qs = conversation.messages.filter(hidden=False).order_by("id")
    yield from qs.iterator(chunk_size=ITER_CHUNK)


def tree(conversation: Conversation) -> Iterator[tuple[Message, int | None]]:
    """Every message of the conversation with its parent's id, parents before children."""
    previous: int | None = None
    for m in active_path(conversation):
        yield m, previous
        previous = m.pk


def active_leaf_id(conversation: Conversation) -> int | None:
    """The last message of the active path."""
    return conversation.messages.filter(hidden=False).order_by("-id").values_list("id", flat=True).first()


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
    usage: dict[str, int | None] = field(default_factory=dict)


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
    while key is not None and key in by_key:
        path.append(key)
        key = by_key[key].parent
    on_path = set(path)
    # A linear thread shows its messages in id order: the active path goes in first, in order; other
    # branches are stored too (out of sight) so that nothing in the file is lost.
    ordered = [by_key[k] for k in reversed(path)] + [n for n in nodes if n.key not in on_path]
    rows = [
        Message(
            conversation=conversation,
            role=n.role,
            content=n.content,
            status=n.status,
            model=n.model[:200],
            input_tokens=n.usage.get("input_tokens"),
            output_tokens=n.usage.get("output_tokens"),
            hidden=n.key not in on_path,
        )
        for n in ordered
    ]
    Message.objects.bulk_create(rows, batch_size=ITER_CHUNK)
    # created_at is auto_now_add: the file's timestamps go in with an update that keeps them.
    dated = []
    for row, n in zip(rows, ordered, strict=True):
        if n.created_at is not None:
            row.created_at = n.created_at
            dated.append(row)
    Message.objects.bulk_update(dated, ["created_at"], batch_size=ITER_CHUNK)
    return len(rows)
