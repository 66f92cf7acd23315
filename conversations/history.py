"""The provider request for a reply: the persona's prompt, its path's summary, and the path's turns within budget."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

from . import images
from .attachment import Takes, model_takes
from .context import (
    MESSAGE_OVERHEAD,
    SUMMARIZE_AT,
    Turn,
    attachment_tokens,
    estimate_tokens,
    fenced,
    fit_turns_stable,
    history_tokens,
    system_text,
)
from .llm import ChatRequest
from .llm import split_model as _split_model
from .models import Attachment, Message
from .selectors import PathHistory, path_history, recent_turns
from .services import effective_persona

# How many budgets of history a request reads to place its stable cut points.
STABLE_READ = 3


@dataclass(frozen=True)
class Followups:
    """What the reply's end may call for, as known when its request was built."""

    title_is_auto: bool  # the thread has no model-written title yet
    # Tokens the reply may add before the unsummarized history reaches the summary threshold;
    # None when the request left turns out (trimmed), so only a look at the whole history can tell.
    summary_room: int | None

    def may_need_work(self, reply_tokens: int) -> bool:
        """False when the end of the reply surely calls for no title and no summary."""
        return self.title_is_auto or self.summary_room is None or reply_tokens + MESSAGE_OVERHEAD > self.summary_room


def build_chat_request(reply_id: int) -> ChatRequest:
    """What the provider is sent to write reply `reply_id`: never more than the persona's budget."""
    return build_for_reply(reply_id)[0]


class ReadsFiles(Exception):
    """The request would read files from the storage (see `build_for`'s `files`)."""


def reply_path(reply: Message) -> PathHistory:
    """The path above the reply only (a branch never sees another branch's messages or summary), with
    the summary it may use and the reply's own stop flag: one query."""
    return path_history(reply.conversation, leaf_id=reply.pk, include_leaf=False)


def build_for_reply(reply_id: int) -> tuple[ChatRequest, Followups]:
    """The request for reply `reply_id`, and what its end may call for."""
    reply = Message.objects.select_related("conversation__persona").get(pk=reply_id)
    return build_for(reply)


def build_for(
    reply: Message, *, files: bool = True, history: PathHistory | None = None
) -> tuple[ChatRequest, Followups]:
    """The request for `reply` (its `conversation` and the conversation's `persona` loaded, as the send
    that opened it has them), and what its end may call for. `files=False`: raise ReadsFiles rather
    than read an attachment from the storage (a send builds its request on the socket's one database
    thread, where a storage read would hold every other socket's call back). `history`: the reply's
    `reply_path`, when the caller read it already."""
    conversation = reply.conversation
    persona = effective_persona(conversation)
    if history is None:
        history = reply_path(reply)
    system = system_text(persona.system_prompt, history.summary_text)
    budget = persona.budget_tokens()
    room = budget - estimate_tokens(system) - MESSAGE_OVERHEAD
    # Only the newest turns are read, though well past the budget: the stable cut points count from
    # the oldest unsummarized turn (while a summary is pending, the history outgrows the budget).
    provider, model = _split_model(reply.model)
    recent = recent_turns(history, tokens=STABLE_READ * room, provider=provider)
    turns = fit_turns_stable(system, recent, budget)
    room_after = None
    if len(turns) == len(recent) and sum(t.cost() for t in recent) <= room:
        # The whole unsummarized history is in the request: what it costs is known.
        room_after = int(budget * SUMMARIZE_AT) - history_tokens(system, turns)
    followups = Followups(title_is_auto=conversation.title_is_auto, summary_room=room_after)
    if not files and any(t.attachments for t in turns):
        raise ReadsFiles
    request = ChatRequest(
        model=model,
        system=system,
        messages=with_files(turns, reply.model),
        temperature=persona.temperature,
        max_output_tokens=persona.max_output_tokens,
        cache_key=cache_key(conversation.pk),
    )
    return request, followups


def with_files(turns: list[Turn], spec: str) -> list[dict[str, Any]]:
    """The turns as request messages; a turn with files gets them as parts, read from the storage now."""
    wanted = [a.id for t in turns for a in t.attachments]
    if not wanted:
        return [{"role": t.role, "content": t.content} for t in turns]
    rows = {str(a.pk): a for a in Attachment.objects.filter(pk__in=wanted)}
    provider = spec.partition(":")[0]
    takes = model_takes(spec)
    messages: list[dict[str, Any]] = []
    for t in turns:
        if not t.attachments:
            messages.append({"role": t.role, "content": t.content})
            continue
        parts = [
            {**_part(rows[a.id], takes, provider), "tokens": attachment_tokens(a, provider)}
            for a in t.attachments
            if a.id in rows
        ]
        if t.content.strip():
            parts.append({"type": "text", "text": t.content})
        messages.append({"role": t.role, "content": parts})
    return messages


def _part(attachment: Attachment, takes: Takes, provider: str) -> dict[str, Any]:
    """One file as a provider-neutral part (llm/base.py): images (at the provider's size) and PDFs as
    base64, text fenced."""
    if attachment.kind == Attachment.Kind.TEXT:
        text = _read(attachment).decode("utf-8-sig", "replace")
        return {"type": "text", "text": fenced(attachment.name, text)}
    if attachment.kind == Attachment.Kind.PDF:
        # Only a model that reads PDFs gets the bytes; the others get the text (`data` stays empty).
        data = base64.b64encode(_read(attachment)).decode() if takes.native_pdf else ""
        return {
            "type": "document",
            "media_type": "application/pdf",
            "name": attachment.name,
            "data": data,
            "text": fenced(attachment.name, attachment.text or "(no text could be extracted)"),
        }
    if "image" not in takes.kinds:
        # Sent earlier to another model (the thread's model changed, or a shared thread was continued
        # with another persona): named, as text, for a model that cannot see it.
        return {"type": "text", "text": f"[image: {attachment.name}]"}
    media_type, image = images.for_provider(attachment, provider)
    encoded = base64.b64encode(image).decode()
    return {"type": "image", "media_type": media_type, "name": attachment.name, "data": encoded}


def _read(attachment: Attachment) -> bytes:
    with attachment.file.open("rb") as handle:
        return handle.read()


def cache_key(conversation_id: object) -> str:
    """The conversation's prompt-cache key: stable per thread, and no id of ours sent to the provider."""
    return "conv-" + hashlib.sha256(f"prompt-cache:{conversation_id}".encode()).hexdigest()[:32]


def trimmed(request: ChatRequest) -> ChatRequest:
    """The request with the older half of its turns dropped (the last user turn always stays)."""
    messages = request.messages[len(request.messages) // 2 :]
    while len(messages) > 1 and messages[0]["role"] != "user":
        messages = messages[1:]
    return dataclasses.replace(request, messages=messages)
