"""Reads: what a user may see, and the history a request is built from."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import Http404

from .context import Turn
from .models import Conversation, Message, Persona

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


def conversation_for_user(user: AbstractBaseUser | AnonymousUser, conversation_id: uuid.UUID | str) -> Conversation:
    """The user's own conversation, or Http404 (never 403: nobody learns another's thread exists)."""
    if not user.is_authenticated:
        raise Http404
    try:
        return Conversation.objects.select_related("persona").get(pk=conversation_id, owner=user)
    except (Conversation.DoesNotExist, ValueError, TypeError) as exc:
        raise Http404 from exc


def conversations_for_user(user: AbstractBaseUser) -> QuerySet[Conversation]:
    """The user's threads that have at least one message: pinned first, then newest first."""
    has_messages = Message.objects.filter(conversation=OuterRef("pk"), hidden=False)
    return (
        Conversation.objects.filter(owner=user)
        .filter(Exists(has_messages))
        .select_related("persona")
        .order_by("-pinned", "-updated_at")
    )


def personas_for_user(user: AbstractBaseUser) -> QuerySet[Persona]:
    """Active personas the user may start a thread with (no groups set means everyone)."""
    groups = user.groups.all()  # type: ignore[attr-defined]
    return (
        Persona.objects.filter(is_active=True)
        .filter(Q(groups__isnull=True) | Q(groups__in=groups))
        .distinct()
        .order_by("position", "name")
    )


def persona_for_user(user: AbstractBaseUser, slug: str | None) -> Persona | None:
    """The persona by slug if the user may use it; the default persona when no slug is given."""
    personas = personas_for_user(user)
    if slug:
        return personas.filter(slug=slug).first()
    return personas.filter(is_default=True).first() or personas.first()


def visible_messages(conversation: Conversation) -> QuerySet[Message]:
    """The messages the page shows, in order."""
    return conversation.messages.filter(hidden=False).order_by("id")


def streaming_reply(conversation_id: uuid.UUID) -> Message | None:
    """The reply being generated in this conversation, if any."""
    return Message.objects.filter(conversation_id=conversation_id, status=Message.Status.STREAMING).first()


def history_turns(conversation: Conversation, *, before_id: int) -> list[Turn]:
    """The turns after the summary and before message `before_id`, as request history."""
    qs = conversation.messages.filter(hidden=False, id__lt=before_id).exclude(status=Message.Status.STREAMING)
    if conversation.summary_through is not None:
        qs = qs.filter(id__gt=conversation.summary_through)
    turns = []
    for m in qs.order_by("id").only("id", "role", "content", "output_tokens"):
        if not m.content.strip():
            continue  # a reply that failed before its first token says nothing
        tokens = m.output_tokens if m.role == Message.Role.ASSISTANT else None
        turns.append(Turn(id=m.pk, role=m.role, content=m.content, tokens=tokens))
    return turns
