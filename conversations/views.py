"""Short function views: the chat page, a conversation, the sidebar and its htmx partials."""

from __future__ import annotations

import json
import secrets
import zoneinfo
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import page, pricing, rendering, selectors, services
from .models import ChatModel, Conversation
from .services import ChatError

# What to do next, per error code: shown with the error, by the server (stored replies) and by chat.js.
ERROR_HINTS = {
    "rate_limited": "You are sending messages faster than this site allows: wait a moment and try again.",
    "quota_exceeded": "You have used today's token allowance; ask your admin if you need more.",
    "provider_auth": "The provider rejected the key: ask your admin to check the API key.",
    "provider_rate_limited": "The model provider is rate limiting this site: try again shortly.",
    "provider_unavailable": "The model provider did not answer properly: try again in a moment.",
    "context_too_long": "This conversation is too long for the model: start a new chat to go on.",
    "busy": "A reply is still being written: stop it or wait for it to finish.",
    "interrupted": "The server restarted while this reply was being written: try again for a full answer.",
}


def healthz(request: HttpRequest) -> HttpResponse:
    """For load balancers: the process answers."""
    return JsonResponse({"ok": True})


def _is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def _tz(request: HttpRequest) -> Any:
    """The person's time zone, from the cookie the page's script sets; the site's otherwise."""
    name = request.COOKIES.get("tz", "")
    if name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return timezone.get_current_timezone()


def _sidebar(
    request: HttpRequest, *, query: str = "", cursor: str = "", after_group: str | None = None
) -> dict[str, Any]:
    page = selectors.sidebar_page(
        request.user,  # type: ignore[arg-type]
        query=query[:200],
        cursor=cursor,
        after_group=after_group,
        now=timezone.now(),
        tz=_tz(request),
    )
    return {"sidebar": page, "q": query[:200]}


def _page(request: HttpRequest, conversation: Conversation | None) -> HttpResponse:
    """The chat page: a conversation with its whole history, or the new-chat picker."""
    context: dict[str, Any] = {"conversation": conversation, "error_hints": ERROR_HINTS, **_sidebar(request)}
    thread: list[bytes] = []
    if conversation is not None:
        persona = services.effective_persona(conversation)
        # The active path only, with each message's versions and the path's summary: one query however
        # many branches, and one more for the text of messages not yet rendered (docs/architecture.md).
        path = page.load(conversation, leaf_id=_opened_leaf(request, conversation))
        thread = page.thread_parts(conversation, path, ERROR_HINTS)
        model = pricing.thread_model(conversation, persona)
        context.update(
            persona=persona,
            model=model,
            messages_list=path.rows,
            thread_html=_THREAD,
            offline_demo=model.startswith("offline:"),
            opened_leaf=path.rows[-1].id if path.rows else None,
        )
        if persona.allow_model_choice:
            choices = list(pricing.models_for_user(request.user))  # type: ignore[arg-type]
            if choices and model not in {c.name for c in choices} and pricing.may_use(request.user.pk, model):
                choices.insert(0, ChatModel(name=model))  # the persona's own model, not in the registry
            context["model_choices"] = choices
    else:
        personas = list(selectors.personas_for_user(request.user))  # type: ignore[arg-type]
        chosen = next((p for p in personas if p.is_default), personas[0] if personas else None)
        context.update(personas=personas, chosen=chosen, messages_list=[])
        context["offline_demo"] = bool(chosen and chosen.resolved_model().startswith("offline:"))
    response = render(request, "conversations/chat.html", context)
    if conversation is not None:
        # The thread (UTF-8, a megabyte for 1,000 messages) is joined into the rendered page's bytes,
        # one copy. Through the template it was copied at every level of nesting, as wide characters
        # once the page held any character beyond Latin-1, then encoded: a third of a long page's time.
        head, tail = response.content.split(_THREAD.encode(), 1)
        response.content = b"".join([head, *thread, tail])
    return response


# Where the thread goes in the rendered page: a comment nothing escaped can produce, unguessable besides.
_THREAD = mark_safe(f"<!--thread {secrets.token_hex(8)}-->")  # noqa: S308 - a constant


def _opened_leaf(request: HttpRequest, conversation: Conversation) -> int | None:
    """`?m=N` (a search hit on another branch): the path through message N, down to its most recently
    active descendant. The page shows it and its script makes it the active path (a GET changes nothing)."""
    raw = request.GET.get("m", "")
    if not raw.isdigit() or len(raw) > 18:
        return None
    if not conversation.messages.filter(pk=int(raw)).exists():
        return None
    return selectors.descend(conversation.pk, int(raw))


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """The latest conversation, or a new chat."""
    latest = (
        selectors.conversations_for_user(request.user)  # type: ignore[arg-type]
        .select_related(None)
        .only("id")
        .order_by("-updated_at")  # the latest, pinned or not
        .first()
    )
    if latest is not None:
        return redirect(latest)
    return _page(request, None)


@login_required
@require_http_methods(["GET", "POST"])
def conversation_new(request: HttpRequest) -> HttpResponse:
    """GET: the persona picker. POST: create a conversation with the chosen (or default) persona and open it."""
    if request.method == "GET":
        return _page(request, None)
    persona = selectors.persona_for_user(request.user, request.POST.get("persona") or None)  # type: ignore[arg-type]
    if persona is None:
        raise Http404("No such persona.")
    conversation = services.conversation_start(owner=request.user, persona=persona)  # type: ignore[arg-type]
    return redirect(conversation)


@login_required
@require_GET
def conversation_detail(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """One conversation with its whole history, rendered on the server."""
    return _page(request, selectors.conversation_for_user(request.user, conversation_id))


@login_required
@require_GET
def sidebar(request: HttpRequest) -> HttpResponse:
    """A page of the sidebar's threads (htmx: search, load on scroll, refresh)."""
    context = _sidebar(
        request,
        query=request.GET.get("q", ""),
        cursor=request.GET.get("cursor", ""),
        after_group=request.GET.get("group") or None,
    )
    return render(request, "conversations/_threads.html", context)


@login_required
@require_GET
def conversation_item(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """One thread's sidebar entry (htmx: after a cancelled rename)."""
    conversation = selectors.conversation_for_user(request.user, conversation_id)
    return render(request, "conversations/_thread.html", {"c": conversation})


@login_required
@require_http_methods(["GET", "POST"])
def conversation_rename(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """GET: the inline rename form. POST: save the title; htmx gets the entry back, a plain form a redirect."""
    conversation = selectors.conversation_for_user(request.user, conversation_id)
    if request.method == "GET":
        return render(request, "conversations/_thread_rename.html", {"c": conversation})
    try:
        services.conversation_rename(conversation=conversation, title=request.POST.get("title"))
    except ChatError as exc:
        context = {"c": conversation, "error": exc.message}
        return render(request, "conversations/_thread_rename.html", context, status=400)
    if not _is_htmx(request):
        return redirect(conversation)
    response = render(request, "conversations/_thread.html", {"c": conversation})
    response["HX-Trigger"] = json.dumps({"chat:renamed": {"id": str(conversation.pk), "title": conversation.title}})
    return response


@login_required
@require_POST
def conversation_pin(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """Pin or unpin; htmx gets the sidebar's first page back (the order changed)."""
    conversation = selectors.conversation_for_user(request.user, conversation_id)
    services.conversation_pin(conversation=conversation, pinned=request.POST.get("pinned") in {"1", "true", "on"})
    if not _is_htmx(request):
        return redirect(conversation)
    return render(request, "conversations/_threads.html", _sidebar(request, query=request.POST.get("q", "")))


@login_required
@require_http_methods(["GET", "POST"])
def conversation_delete(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """GET: a confirmation page (without script). POST: delete the thread and its messages."""
    conversation = selectors.conversation_for_user(request.user, conversation_id)
    if request.method == "GET":
        return render(request, "conversations/confirm_delete.html", {"c": conversation})
    services.conversation_delete(conversation=conversation)
    if not _is_htmx(request):
        return redirect("index")
    response = HttpResponse("")
    response["HX-Trigger"] = json.dumps({"chat:deleted": {"id": str(conversation_id)}})
    return response


@login_required
@require_GET
def message_detail(request: HttpRequest, conversation_id: str, message_id: int) -> HttpResponse:
    """One message, any version of it, as the page renders it (?format=text: its raw text, for copying)."""
    conversation = selectors.conversation_for_user(request.user, conversation_id)
    if request.GET.get("format") == "text":
        text = conversation.messages.filter(pk=message_id).values_list("content", flat=True).first()
        if text is None:
            raise Http404
        return HttpResponse(text, content_type="text/plain; charset=utf-8")
    # With its versions, so the rendering the page swaps in keeps `‹ i / n ›`; the page's own cache entry.
    one = page.load_one(conversation, message_id) if message_id < 2**63 else None
    if one is None:
        raise Http404
    html = rendering.render_rows(
        conversation.pk,
        one.rows,
        one.siblings(),
        ERROR_HINTS,
        lambda rows: page.messages(conversation, rows, with_files=one.with_files),
    )
    return HttpResponse(html[0])
