"""What an API request reads and writes: its persona or model, the user's limits, the usage and the optional thread."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from conversations import limits, pricing, selectors
from conversations.llm import Usage
from conversations.models import ChatModel, Conversation, Message, Persona, UsageRecord

from .wire import ApiError, CompletionRequest

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

TITLE_CHARS = 80


@dataclass
class Plan:
    """Everything the provider call needs, decided before it starts."""

    user_id: int
    persona: Persona | None  # None: a registry model asked for by name
    spec: str  # provider:model
    system: str
    conversation_id: uuid.UUID | None


def models(user: AbstractBaseUser) -> tuple[list[Persona], list[ChatModel]]:
    """What the user may ask for: personas (by their groups), then registry models (by theirs)."""
    return list(selectors.personas_for_user(user)), list(pricing.models_for_user(user))


def _refusal_error(refusal: limits.Refusal) -> ApiError:
    if refusal.code == "quota_exceeded":
        return ApiError(
            429, refusal.message, code="insufficient_quota", type_="insufficient_quota", retry_after=refusal.retry_after
        )
    return ApiError(429, refusal.message, code="rate_limit_exceeded", type_="requests", retry_after=refusal.retry_after)


def not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def _resolve(user: AbstractBaseUser, model: str) -> tuple[Persona | None, str]:
    """A persona slug -> (persona, its model); a registry model's name -> (None, the name); or 404."""
    if ":" in model:  # `provider:model`: never a slug
        if not pricing.models_for_user(user).filter(name=model).exists():
            raise not_found(model)
        return None, model
    persona = selectors.personas_for_user(user).filter(slug=model).first()
    if persona is None:
        raise not_found(model)
    spec = persona.resolved_model()
    # As on the page: a persona's model that the registry has retired or kept for other groups is off.
    if not pricing.may_use(user.pk, spec):
        raise not_found(model)
    return persona, spec


def plan(user: AbstractBaseUser, request: CompletionRequest) -> Plan:
    """Resolve the persona or model, apply the user's quota and rate limit, find or make the thread; or ApiError."""
    user_id: int = user.pk
    persona, spec = _resolve(user, request.model)
    conversation_id = None
    if request.conversation and persona is None:
        raise ApiError(
            400, "A stored conversation needs a persona as its model (GET /v1/models).", param="conversation"
        )
    if request.conversation and request.conversation != "new":
        conversation = (
            Conversation.objects.filter(pk=request.conversation, owner_id=user_id).select_related("persona").first()
        )
        if conversation is None:
            raise ApiError(404, "No such conversation.", code="conversation_not_found", param="conversation")
        if persona is None or conversation.persona_id != persona.pk:
            raise ApiError(
                400,
                f"That conversation talks to `{conversation.persona.slug}`: use it as the model.",
                param="conversation",
            )
        conversation_id = conversation.pk
    refusal = limits.check_quota(user_id) or limits.check_rate(user_id)
    if refusal:
        raise _refusal_error(refusal)
    if request.conversation == "new" and persona is not None:
        conversation_id = Conversation.objects.create(
            owner_id=user_id, persona=persona, title=request.messages[-1]["content"].strip()[:TITLE_CHARS]
        ).pk
    # The persona's system prompt first; the client's own system messages after it.
    own = persona.system_prompt.strip() if persona else ""
    system = "\n\n".join(p for p in (own, request.system.strip()) if p)
    return Plan(user_id, persona, spec, system, conversation_id)


@transaction.atomic
def record(
    plan: Plan,
    *,
    prompt: str,
    reply: str,
    usage: Usage,
    estimated: bool,
    status: str = Message.Status.COMPLETE,
    error_code: str = "",
) -> None:
    """Store the call's usage record (priced), count it against the quota, and keep the exchange in
    its thread when one was asked for."""
    cost = pricing.cost_of(plan.spec, usage)
    message = None
    if plan.conversation_id is not None:
        # The exchange continues the thread's active path (as a send from the page would).
        conversation = Conversation.objects.select_for_update().get(pk=plan.conversation_id)
        parent = conversation.active_leaf_id
        asked = Message.objects.create(
            conversation=conversation, parent_id=parent, role=Message.Role.USER, content=prompt
        )
        message = Message.objects.create(
            conversation=conversation,
            parent=asked,
            role=Message.Role.ASSISTANT,
            content=reply,
            status=status,
            model=plan.spec,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cost=cost,
            error_code=error_code,
        )
        Message.objects.filter(pk=asked.pk).update(active_child_id=message.pk)
        if parent is not None:
            Message.objects.filter(pk=parent).update(active_child_id=asked.pk)
        Conversation.objects.filter(pk=conversation.pk).update(active_leaf_id=message.pk, updated_at=timezone.now())
    UsageRecord.objects.create(
        user_id=plan.user_id,
        conversation_id=plan.conversation_id,
        persona=plan.persona,
        message=message,
        model=plan.spec,
        kind=UsageRecord.Kind.REPLY,
        input_tokens=usage.input_tokens or 0,
        cached_input_tokens=usage.cached_input_tokens or 0,
        cache_write_tokens=usage.cache_write_tokens or 0,
        output_tokens=usage.output_tokens or 0,
        estimated=estimated,
        cost=cost,
    )
    limits.record_usage(plan.user_id, (usage.input_tokens or 0) + (usage.output_tokens or 0))
