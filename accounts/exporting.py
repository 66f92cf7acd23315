"""A conversation as Markdown (its active path) or JSON (its whole tree), and a whole account as a streamed ZIP.

Everything here is a generator of text pieces: an account of any size is written a message at a time.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Iterator
from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet

from conversations.models import Attachment, Conversation, Message

from . import paths


def message_json(m: Message, parent_id: int | None, files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One message in the export format (a user message's files by name, type and size)."""
    out: dict[str, Any] = {
        "id": m.pk,
        "parent_id": parent_id,
        "role": m.role,
        "content": m.content,
        "status": m.status,
        "model": m.model,
        "created_at": m.created_at.isoformat(),
        "usage": {
            "input_tokens": m.input_tokens,
            "output_tokens": m.output_tokens,
            "cached_input_tokens": m.cached_input_tokens,
            "cache_write_tokens": m.cache_write_tokens,
            "cost": None if m.cost is None else str(m.cost),
        },
    }
    if files:
        out["attachments"] = files
    return out


def conversation_json(conversation: Conversation) -> Iterator[str]:
    """The whole tree as JSON, in pieces: `{"id", "title", "persona", "created_at", "messages": [...]}`."""
    head = {
        "id": str(conversation.pk),
        "title": str(conversation),
        "persona": conversation.persona.slug,
        "created_at": conversation.created_at.isoformat(),
        "active_leaf_id": paths.active_leaf_id(conversation),
    }
    yield json.dumps(head, ensure_ascii=False)[:-1] + ', "messages": ['
    files: dict[int, list[dict[str, Any]]] = {}
    sent = _sent_files(conversation)
    for message_id, name, content_type, size in sent.values_list("message_id", "name", "content_type", "size"):
        files.setdefault(message_id, []).append({"name": name, "content_type": content_type, "size": size})
    for i, (m, parent_id) in enumerate(paths.tree(conversation)):
        piece = message_json(m, parent_id, files.get(m.pk))
        yield ("," if i else "") + "\n  " + json.dumps(piece, ensure_ascii=False)
    yield "\n]}\n"


def _sent_files(conversation: Conversation) -> QuerySet[Attachment]:
    """The conversation's sent files, each message's in the order they were attached."""
    return Attachment.objects.filter(conversation=conversation, message__isnull=False).order_by(
        "position", "created_at", "id"
    )


HEADINGS: dict[str, str] = {Message.Role.USER: "## User", Message.Role.ASSISTANT: "## Assistant"}


def conversation_markdown(conversation: Conversation) -> Iterator[str]:
    """The active path as Markdown: the title, then each message under `## User` / `## Assistant`."""
    yield f"# {conversation}\n"
    names: dict[int, list[str]] = {}
    sent = _sent_files(conversation)
    for message_id, name in sent.values_list("message_id", "name"):
        names.setdefault(message_id, []).append(name)
    for m in paths.active_path(conversation):
        files = "".join(f"\n_Attached: {name}_\n" for name in names.get(m.pk, ()))
        yield f"\n{HEADINGS.get(m.role, '## ' + m.role.title())}\n{files}\n{m.content.rstrip()}\n"


class _Pipe:
    """A write-only file that collects what the zip writer writes, to be taken out piece by piece."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _write_member(zf: zipfile.ZipFile, pipe: _Pipe, name: str, pieces: Iterable[str]) -> Iterator[bytes]:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, mode="w", force_zip64=True) as member:
        buffered: list[bytes] = []
        size = 0
        for piece in pieces:
            data = piece.encode()
            buffered.append(data)
            size += len(data)
            if size >= 64 * 1024:
                member.write(b"".join(buffered))
                buffered.clear()
                size = 0
                yield pipe.take()
        member.write(b"".join(buffered))
    yield pipe.take()


def account_zip(user: User) -> Iterator[bytes]:
    """Every conversation of `user` as `<uuid>.json` + `<uuid>.md` in a ZIP, produced as it is written."""
    pipe = _Pipe()
    # The pipe cannot seek: zipfile then writes each member's sizes after its data (a data descriptor).
    with zipfile.ZipFile(pipe, mode="w", compression=zipfile.ZIP_DEFLATED) as zf:  # type: ignore[call-overload]
        conversations = Conversation.objects.filter(owner=user).select_related("persona").order_by("created_at")
        for conversation in conversations.iterator(chunk_size=100):
            yield from _write_member(zf, pipe, f"{conversation.pk}.json", conversation_json(conversation))
            yield from _write_member(zf, pipe, f"{conversation.pk}.md", conversation_markdown(conversation))
    yield pipe.take()
