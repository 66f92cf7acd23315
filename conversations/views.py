"""Short function views: the chat page, a conversation, a new conversation."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from . import selectors, services
from .models import Conversation


def healthz(request: HttpRequest) -> HttpResponse:
    """For load balancers: the process answers."""
    return JsonResponse({"ok": True})


def _page(request: HttpRequest, conversation: Conversation | None) -> HttpResponse:
    context = {
        "conversation": conversation,
        "messages_list": list(selectors.visible_messages(conversation)) if conversation else [],
        "conversations": selectors.conversations_for_user(request.user)[:50],  # type: ignore[arg-type]
        "personas": selectors.personas_for_user(request.user),  # type: ignore[arg-type]
    }
    return render(request, "conversations/chat.html", context)


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """The latest conversation, or a new chat."""
    latest = selectors.conversations_for_user(request.user).first()  # type: ignore[arg-type]
    if latest is not None:
        return redirect(latest)
    return _page(request, None)


@login_required
@require_POST
def conversation_new(request: HttpRequest) -> HttpResponse:
    """Create a conversation with the chosen (or default) persona and open it."""
    persona = selectors.persona_for_user(request.user, request.POST.get("persona") or None)  # type: ignore[arg-type]
    if persona is None:
        raise Http404("No such persona.")
    conversation = services.conversation_create(owner=request.user, persona=persona)  # type: ignore[arg-type]
    return redirect(conversation)


@login_required
@require_GET
def conversation_detail(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """One conversation with its whole history, rendered on the server."""
    return _page(request, selectors.conversation_for_user(request.user, conversation_id))
