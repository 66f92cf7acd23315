"""The provider request for a reply: the persona's prompt, the summary, and the turns within budget."""

from __future__ import annotations

import dataclasses

from .context import fit_turns, system_text
from .llm import ChatRequest
from .llm import split_model as _split_model
from .models import Message
from .selectors import history_turns
from .services import effective_persona


def build_chat_request(reply_id: int) -> ChatRequest:
    """What the provider is sent to write reply `reply_id`: never more than the persona's budget."""
    reply = Message.objects.select_related("conversation__persona").get(pk=reply_id)
    conversation = reply.conversation
    persona = effective_persona(conversation)
    system = system_text(persona.system_prompt, conversation.summary)
    turns = fit_turns(system, history_turns(conversation, before_id=reply_id), persona.budget_tokens())
    _, model = _split_model(reply.model)
    return ChatRequest(
        model=model,
        system=system,
        messages=[{"role": t.role, "content": t.content} for t in turns],
        temperature=persona.temperature,
        max_output_tokens=persona.max_output_tokens,
    )


def trimmed(request: ChatRequest) -> ChatRequest:
    """The request with the older half of its turns dropped (the last user turn always stays)."""
    messages = request.messages[len(request.messages) // 2 :]
    while len(messages) > 1 and messages[0]["role"] != "user":
        messages = messages[1:]
    return dataclasses.replace(request, messages=messages)
