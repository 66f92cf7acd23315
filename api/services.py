"""What an API request reads and writes: its persona, the user's limits, the usage and the optional thread."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from conversations import limits, selectors
from conversations.models import Conversation, Message, Persona

from .wire import ApiError, CompletionRequest

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

TITLE_CHARS = 80


@dataclass
class Plan:
    """Everything the provider call needs, decided before it starts."""

    user_id: int
    persona: Persona
    spec: str  # provider:model
    system: str
    conversation_id: uuid.UUID | None


def personas(user: AbstractBaseUser) -> list[Persona]:
    """The personas the user may use (by their groups), in picker order."""
    return list(selectors.personas_for_user(user))


def _refusal_error(refusal: limits.Refusal) -> ApiError:
    if refusal.code == "quota_exceeded":
        return ApiError(
            429, refusal.message, code="insufficient_quota", type_="insufficient_quota", retry_after=refusal.retry_after
        )
    return ApiError(429, refusal.message, code="rate_limit_exceeded", type_="requests", retry_after=refusal.retry_after)


def plan(user: AbstractBaseUser, request: CompletionRequest) -> Plan:
    """Resolve the persona, apply the user's quota and rate limit, find or make the thread; or ApiError."""
    user_id: int = user.pk
    persona = selectors.personas_for_user(user).filter(slug=request.model).first()
    if persona is None:
        raise ApiError(
            404,
            f"The model `{request.model}` does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )
    conversation_id = None
    if request.conversation and request.conversation != "new":
        conversation = Conversation.objects.filter(pk=request.conversation, owner_id=user_id).first()
        if conversation is None:
            raise ApiError(404, "No such conversation.", code="conversation_not_found", param="conversation")
        if conversation.persona_id != persona.pk:
            raise invalid_persona(conversation)
        conversation_id = conversation.pk
    refusal = limits.check_quota(user_id) or limits.check_rate(user_id)
    if refusal:
        raise _refusal_error(refusal)
    if request.conversation == "new":
        conversation_id = Conversation.objects.create(
            owner_id=user_id, persona=persona, title=request.messages[-1]["content"].strip()[:TITLE_CHARS]
        ).pk
    # The persona's system prompt first; the client's own system messages after it.
    system = "\n\n".join(p for p in (persona.system_prompt.strip(), request.system.strip()) if p)
    return Plan(user_id, persona, persona.resolved_model(), system, conversation_id)


def invalid_persona(conversation: Conversation) -> ApiError:
    return ApiError(
        400,
        f"That conversation talks to `{conversation.persona.slug}`: use it as the model.",
        param="conversation",
    )


@transaction.atomic
def record(
    plan: Plan,
    *,
    prompt: str,
    reply: str,
    input_tokens: int,
    output_tokens: int,
    status: str = Message.Status.COMPLETE,
    error_code: str = "",
) -> None:
    """Count the exchange against the user's quota; store it in its thread when one was asked for."""
    if plan.conversation_id is not None:
        Message.objects.create(conversation_id=plan.conversation_id, role=Message.Role.USER, content=prompt)
        Message.objects.create(
            conversation_id=plan.conversation_id,
            role=Message.Role.ASSISTANT,
            content=reply,
            status=status,
            model=plan.spec,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            error_code=error_code,
        )
        Conversation.objects.filter(pk=plan.conversation_id).update(updated_at=timezone.now())
    else:
        # No stored row to rebuild the day's counter from later: make sure the counter exists now.
        limits.tokens_used_today(plan.user_id)
    limits.record_usage(plan.user_id, input_tokens + output_tokens)
