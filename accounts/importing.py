"""Reading exports: this site's JSON and ZIP, ChatGPT's and Claude's `conversations.json` (alone or zipped).

`parse` turns a file into drafts (nothing stored, every problem found up front with a reason a person
can act on); `store` writes drafts in one transaction: a file is imported whole or not at all.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from conversations import selectors
from conversations.models import Conversation, Message, Persona

from .paths import Node, store_tree


class ImportFailed(Exception):
    """A file that cannot be imported, with the reason in words for the person who sent it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Draft:
    """One conversation read from a file, not yet stored."""

    title: str
    created_at: dt.datetime | None
    nodes: list[Node] = field(default_factory=list)
    active_leaf: str | None = None
    persona: str = ""


def max_bytes() -> int:
    return int(getattr(settings, "ACCOUNT_IMPORT_MAX_MB", 100)) * 1024 * 1024


def max_conversations() -> int:
    return int(getattr(settings, "ACCOUNT_IMPORT_MAX_CONVERSATIONS", 5000))


def max_messages() -> int:
    return int(getattr(settings, "ACCOUNT_IMPORT_MAX_MESSAGES", 200_000))


KNOWN = "this site's export (.json or .zip), ChatGPT's conversations.json or Claude's conversations.json"


# -- reading the file --------------------------------------------------------------------------------------
def parse(name: str, data: bytes) -> list[Draft]:
    """The conversations in an uploaded file, or ImportFailed saying why none can be read."""
    if len(data) > max_bytes():
        raise ImportFailed(f"The file is larger than the {max_bytes() // (1024 * 1024)} MB this site accepts.")
    if not data.strip():
        raise ImportFailed("The file is empty.")
    drafts = _parse_zip(data) if data[:4] == b"PK\x03\x04" else _dispatch(_load_json(data, name), name)
    # A conversation with nothing left to show (only system or tool messages, say) is not brought in.
    drafts = [d for d in drafts if d.nodes]
    if not drafts:
        raise ImportFailed("The file holds no conversations with messages in them.")
    if len(drafts) > max_conversations():
        raise ImportFailed(f"The file holds {len(drafts)} conversations; at most {max_conversations()} at a time.")
    count = sum(len(d.nodes) for d in drafts)
    if count > max_messages():
        raise ImportFailed(f"The file holds {count} messages; at most {max_messages()} at a time.")
    return drafts


def _load_json(data: bytes, name: str) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ImportFailed(f"{name} is not a text file in UTF-8 (byte {exc.start} is not), so not an export.") from exc
    except json.JSONDecodeError as exc:
        raise ImportFailed(
            f"{name} is not valid JSON ({exc.msg}: line {exc.lineno}, column {exc.colno}): "
            "the file may be cut short or not an export."
        ) from exc


def _parse_zip(data: bytes) -> list[Draft]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if sum(i.file_size for i in infos) > 4 * max_bytes():
            raise ImportFailed("The ZIP unpacks to more than this site accepts.")
        exports = [i for i in infos if i.filename.rsplit("/", 1)[-1] == "conversations.json"]
        if exports:  # ChatGPT's and Claude's downloads are ZIPs with conversations.json inside
            return _dispatch(_load_json(archive.read(exports[0]), exports[0].filename), exports[0].filename)
        drafts: list[Draft] = []
        for info in infos:
            if info.filename.endswith(".json"):
                drafts.extend(_dispatch(_load_json(archive.read(info), info.filename), info.filename))
        if not drafts:
            raise ImportFailed(f"The ZIP holds no conversation: expected {KNOWN}.")
        return drafts
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise ImportFailed(f"The ZIP cannot be read ({exc}): it may be cut short.") from exc


def _dispatch(doc: Any, name: str) -> list[Draft]:
    if isinstance(doc, dict) and "messages" in doc:
        return [_site(doc, 0)]
    if isinstance(doc, list) and doc and all(isinstance(c, dict) for c in doc):
        if all("mapping" in c for c in doc):
            return [_chatgpt(c, i) for i, c in enumerate(doc)]
        if all("chat_messages" in c for c in doc):
            return [_claude(c, i) for i, c in enumerate(doc)]
        if all("messages" in c for c in doc):
            return [_site(c, i) for i, c in enumerate(doc)]
    if isinstance(doc, list) and not doc:
        raise ImportFailed(f"{name} holds no conversations.")
    raise ImportFailed(f"{name} is JSON but not an export this site knows: expected {KNOWN}.")


def _where(i: int, conv: dict[str, Any], key: str = "title") -> str:
    title = conv.get(key)
    return f"Conversation {i + 1}" + (f" (“{str(title)[:60]}”)" if title else "")


def _time(value: Any, where: str) -> dt.datetime | None:
    """An ISO 8601 string or a Unix time in seconds, as an aware datetime."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int | float):
            return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)
        if isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value)
            return parsed if timezone.is_aware(parsed) else parsed.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise ImportFailed(f"{where}: “{str(value)[:40]}” is not a date.")


def _ordered(nodes: list[Node], where: str) -> list[Node]:
    """Parents before children; a parent that is not in the file makes its child a root; a cycle is refused."""
    keys = {n.key for n in nodes}
    if len(keys) != len(nodes):
        raise ImportFailed(f"{where}: two messages share an id.")
    children: dict[str | None, list[Node]] = {}
    for n in nodes:
        if n.parent not in keys:
            n.parent = None
        children.setdefault(n.parent, []).append(n)
    out: list[Node] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(reversed(children.get(n.key, [])))
    if len(out) != len(nodes):
        raise ImportFailed(f"{where}: its messages' parents go round in a circle.")
    return out


# -- this site's format -------------------------------------------------------------------------------------
def _site(conv: dict[str, Any], i: int) -> Draft:
    where = _where(i, conv)
    messages = conv.get("messages")
    if not isinstance(messages, list):
        raise ImportFailed(f"{where}: “messages” is not a list.")
    nodes = []
    for j, m in enumerate(messages):
        at = f"{where}, message {j + 1}"
        if not isinstance(m, dict) or "id" not in m or not isinstance(m.get("content"), str):
            raise ImportFailed(f"{at}: expected an object with “id”, “role” and “content”.")
        if m.get("role") not in (Message.Role.USER, Message.Role.ASSISTANT):
            raise ImportFailed(f"{at}: role “{str(m.get('role'))[:20]}” is neither user nor assistant.")
        status = m.get("status") or Message.Status.COMPLETE
        if status not in Message.Status.values:
            raise ImportFailed(f"{at}: unknown status “{str(status)[:20]}”.")
        if status == Message.Status.STREAMING:
            status = Message.Status.INTERRUPTED  # nothing is writing it here
        usage: dict[str, Any] = m["usage"] if isinstance(m.get("usage"), dict) else {}
        parent = m.get("parent_id")
        nodes.append(
            Node(
                key=str(m["id"]),
                parent=None if parent is None else str(parent),
                role=m["role"],
                content=m["content"],
                created_at=_time(m.get("created_at"), at),
                status=status,
                model=str(m.get("model") or ""),
                usage={**{k: _count(usage.get(k), at) for k in TOKEN_COUNTS}, "cost": _cost(usage.get("cost"), at)},
            )
        )
    leaf = conv.get("active_leaf_id")
    return Draft(
        title=str(conv.get("title") or "")[:200],
        created_at=_time(conv.get("created_at"), where),
        nodes=_ordered(nodes, where),
        active_leaf=None if leaf is None else str(leaf),
        persona=str(conv.get("persona") or ""),
    )


TOKEN_COUNTS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens")


def _cost(value: Any, where: str) -> Decimal | None:
    if value is None:
        return None
    try:
        cost = Decimal(str(value))
    except InvalidOperation:
        cost = Decimal(-1)
    if not cost.is_finite() or cost < 0 or cost >= 10**6:
        raise ImportFailed(f"{where}: a cost “{str(value)[:20]}” is not an amount in dollars.")
    return cost.quantize(Decimal("0.00000001"))


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
        return value
    raise ImportFailed(f"{where}: a token count “{str(value)[:20]}” is not a number.")


# -- ChatGPT ------------------------------------------------------------------------------------------------
def _chatgpt_text(message: dict[str, Any]) -> str | None:
    """The text a person saw, or None for what ChatGPT keeps out of sight (tool calls, reasoning, etc.)."""
    content = message.get("content")
    if not isinstance(content, dict):
        return None
    if content.get("content_type") not in ("text", "multimodal_text"):
        return None
    parts = content.get("parts")
    if not isinstance(parts, list):
        return None
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, dict):
            out.append("[image]" if "image" in str(part.get("content_type", "")) else "[attachment]")
    return "\n".join(out)


def _chatgpt(conv: dict[str, Any], i: int) -> Draft:
    where = _where(i, conv)
    mapping = conv.get("mapping")
    if not isinstance(mapping, dict):
        raise ImportFailed(f"{where}: “mapping” is not an object of messages.")
    parent_of: dict[str, str | None] = {}
    kept: dict[str, Node] = {}
    for key, node in mapping.items():
        if not isinstance(node, dict):
            raise ImportFailed(f"{where}: node {str(key)[:40]} is not an object.")
        parent = node.get("parent")
        if parent is not None and not isinstance(parent, str):
            raise ImportFailed(f"{where}: node {str(key)[:40]} has a parent that is not an id.")
        parent_of[key] = parent
        message = node.get("message")
        if message is None:
            continue  # the root of every mapping
        if not isinstance(message, dict) or not isinstance(message.get("author"), dict):
            raise ImportFailed(f"{where}: node {str(key)[:40]} has no message author.")
        role = message["author"].get("role")
        metadata: dict[str, Any] = message["metadata"] if isinstance(message.get("metadata"), dict) else {}
        if role not in ("user", "assistant") or metadata.get("is_visually_hidden_from_conversation"):
            continue  # system and tool messages, and ChatGPT's own hidden context
        if message.get("recipient", "all") != "all":
            continue  # an assistant's call to a tool
        text = _chatgpt_text(message)
        if text is None or (not text.strip() and role == "assistant"):
            continue
        slug = metadata.get("model_slug")
        kept[key] = Node(
            key=key,
            parent=None,
            role=role,
            content=text,
            created_at=_time(message.get("create_time"), f"{where}, node {str(key)[:40]}"),
            model=f"openai:{slug}" if isinstance(slug, str) and slug else "",
        )

    def kept_ancestor(key: str | None) -> str | None:
        seen: set[str] = set()
        while key is not None and key not in kept:
            if key in seen:
                raise ImportFailed(f"{where}: its messages' parents go round in a circle.")
            seen.add(key)
            key = parent_of.get(key)
        return key

    for key, node in kept.items():
        node.parent = kept_ancestor(parent_of.get(key))
    current = conv.get("current_node")
    leaf = kept_ancestor(current) if isinstance(current, str) else None
    return Draft(
        title=str(conv.get("title") or "")[:200],
        created_at=_time(conv.get("create_time"), where),
        nodes=_ordered(list(kept.values()), where),
        active_leaf=leaf,
    )


# -- Claude -------------------------------------------------------------------------------------------------
CLAUDE_ROOT = "00000000-0000-4000-8000-000000000000"


def _claude(conv: dict[str, Any], i: int) -> Draft:
    where = _where(i, conv, "name")
    messages = conv.get("chat_messages")
    if not isinstance(messages, list):
        raise ImportFailed(f"{where}: “chat_messages” is not a list.")
    nodes: list[Node] = []
    for j, m in enumerate(messages):
        at = f"{where}, message {j + 1}"
        if not isinstance(m, dict) or m.get("sender") not in ("human", "assistant"):
            raise ImportFailed(f"{at}: expected a message from “human” or “assistant”.")
        text = m.get("text")
        if not isinstance(text, str) or not text:
            blocks: list[Any] = m["content"] if isinstance(m.get("content"), list) else []
            text = "\n\n".join(
                b["text"]
                for b in blocks
                if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
            )
        key = str(m.get("uuid") or f"#{j}")
        parent = m.get("parent_message_uuid")
        if parent is None or parent == CLAUDE_ROOT:
            parent = nodes[-1].key if nodes and "parent_message_uuid" not in m else None
        nodes.append(
            Node(
                key=key,
                parent=parent,
                role=Message.Role.USER if m["sender"] == "human" else Message.Role.ASSISTANT,
                content=text,
                created_at=_time(m.get("created_at"), at),
            )
        )
    return Draft(
        title=str(conv.get("name") or "")[:200],
        created_at=_time(conv.get("created_at"), where),
        nodes=_ordered(nodes, where),
        active_leaf=nodes[-1].key if nodes else None,
    )


# -- storing ------------------------------------------------------------------------------------------------
def _persona(owner: User, slug: str) -> Persona:
    persona = (slug and selectors.persona_for_user(owner, slug)) or selectors.persona_for_user(owner, None)
    if persona is None:
        raise ImportFailed("No persona is available to you, so there is nothing to import into. Ask an admin.")
    return persona


@transaction.atomic
def store(*, owner: User, drafts: list[Draft], progress: Callable[[int], None] | None = None) -> list[Conversation]:
    """Store every draft as a new conversation of `owner`, all or none."""
    out = []
    for n, draft in enumerate(drafts, start=1):
        conversation = Conversation.objects.create(
            owner=owner, persona=_persona(owner, draft.persona), title=draft.title, title_is_auto=not draft.title
        )
        store_tree(conversation, draft.nodes, draft.active_leaf)
        times = [node.created_at for node in draft.nodes if node.created_at is not None]
        created = draft.created_at or (min(times) if times else None)
        if created is not None:
            updated = max([*times, created])
            Conversation.objects.filter(pk=conversation.pk).update(created_at=created, updated_at=updated)
        out.append(conversation)
        if progress is not None:
            progress(n)
    return out
