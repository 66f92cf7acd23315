"""The settings page, export, import, share links and deleting the account: short function views."""

from __future__ import annotations

import time
from typing import Any

from allauth.account import app_settings as allauth_settings
from allauth.account.internal.flows.login import get_authentication_records
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from conversations import rendering, selectors
from conversations.models import Message

from . import exporting, importing, services, streaming
from . import selectors as account_selectors
from .models import Profile


def _settings_context(request: HttpRequest) -> dict[str, Any]:
    user = request.user
    return {
        "account_profile": services.profile_for(user),  # type: ignore[arg-type]
        "themes": Profile.Theme.choices,
        "share_links": list(account_selectors.share_links_for_user(user)),  # type: ignore[arg-type]
        "import_jobs": list(account_selectors.import_jobs_for_user(user)),  # type: ignore[arg-type]
        "has_password": user.has_usable_password(),  # type: ignore[union-attr]
    }


@login_required
@require_GET
def account_settings(request: HttpRequest) -> HttpResponse:
    """The settings page: profile, email and password links, theme, sharing, export, import, delete."""
    return render(request, "accounts/settings.html", _settings_context(request))


@login_required
@require_POST
def profile_save(request: HttpRequest) -> HttpResponse:
    """Save the display name."""
    services.profile_update(user=request.user, display_name=request.POST.get("display_name", ""))  # type: ignore[arg-type]
    messages.success(request, "Your profile is saved.")
    return redirect("account_settings")


@login_required
@require_POST
def theme_save(request: HttpRequest) -> HttpResponse:
    """Save the theme (system, light or dark); every page uses it from the next load on."""
    try:
        services.profile_update(user=request.user, theme=request.POST.get("theme", ""))  # type: ignore[arg-type]
    except ValueError:
        messages.error(request, "Choose system, light or dark.")
        return render(request, "accounts/settings.html", _settings_context(request), status=400)
    messages.success(request, "Theme saved.")
    return redirect(_next(request, reverse("account_settings")))


def _next(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        return target
    return default


# -- export ------------------------------------------------------------------------------------------------
def _filename(conversation: Any, ext: str) -> str:
    return f"{slugify(str(conversation))[:60] or 'conversation'}-{str(conversation.pk)[:8]}.{ext}"


@login_required
@require_GET
def export_markdown(request: HttpRequest, conversation_id: str) -> StreamingHttpResponse:
    """The active path as Markdown."""
    conversation = selectors.conversation_for_user(request.user, conversation_id)
    pieces = exporting.conversation_markdown(conversation)
    return streaming.download(
        request, pieces, content_type="text/markdown; charset=utf-8", filename=_filename(conversation, "md")
    )


@login_required
@require_GET
def export_json(request: HttpRequest, conversation_id: str) -> StreamingHttpResponse:
    """The whole tree as JSON."""
    conversation = selectors.conversation_for_user(request.user, conversation_id)
    pieces = exporting.conversation_json(conversation)
    return streaming.download(
        request, pieces, content_type="application/json", filename=_filename(conversation, "json")
    )


@login_required
@require_GET
def export_account(request: HttpRequest) -> StreamingHttpResponse:
    """Every conversation as one ZIP, written while it downloads."""
    stamp = timezone.now().strftime("%Y-%m-%d")
    pieces = exporting.account_zip(request.user)  # type: ignore[arg-type]
    return streaming.download(request, pieces, content_type="application/zip", filename=f"chat-export-{stamp}.zip")


# -- import ------------------------------------------------------------------------------------------------
@login_required
@require_POST
def import_upload(request: HttpRequest) -> HttpResponse:
    """Import an uploaded export: at once if small, by the worker if large (with progress on /account/)."""
    upload = request.FILES.get("file")
    if upload is None:
        messages.error(request, "Choose a file to import.")
        return render(request, "accounts/settings.html", _settings_context(request), status=400)
    if upload.size is not None and upload.size > importing.max_bytes():
        messages.error(
            request, f"{upload.name}: larger than the {importing.max_bytes() // 2**20} MB this site accepts."
        )
        return render(request, "accounts/settings.html", _settings_context(request), status=400)
    data = upload.read()
    name = upload.name or "upload"
    try:
        if len(data) <= services.inline_import_bytes():
            imported = services.import_now(owner=request.user, name=name, data=data)  # type: ignore[arg-type]
            n = len(imported)
            messages.success(request, f"Imported {n} conversation{'s' if n != 1 else ''} from {name}.")
        else:
            services.import_queue(owner=request.user, name=name, data=data)  # type: ignore[arg-type]
            messages.info(request, f"Importing {name} in the background: progress is shown below.")
    except importing.ImportFailed as exc:
        messages.error(request, f"Nothing was imported. {exc.message}")
        return render(request, "accounts/settings.html", _settings_context(request), status=400)
    return redirect(reverse("account_settings") + "#import")


@login_required
@require_GET
def import_status(request: HttpRequest, job_id: str) -> HttpResponse:
    """One import's progress (htmx polls it while it runs)."""
    job = account_selectors.import_job_for_user(request.user, job_id)  # type: ignore[arg-type]
    return render(request, "accounts/_import_job.html", {"job": job})


# -- share links -------------------------------------------------------------------------------------------
@login_required
@require_POST
def share_create(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """Make a link to a snapshot of the thread as it is now."""
    conversation = selectors.conversation_for_user(request.user, conversation_id)
    link = services.share_create(conversation=conversation)
    url = request.build_absolute_uri(reverse("share_view", args=[link.token]))
    messages.success(request, f"Anyone with this link can read the thread as it is now: {url}", extra_tags="share")
    return redirect(_next(request, reverse("account_settings") + "#sharing"))


@login_required
@require_POST
def share_revoke(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """Revoke a link of this thread (field `token`), or all of its links."""
    conversation = selectors.conversation_for_user(request.user, conversation_id)
    n = services.share_revoke(
        owner=request.user,  # type: ignore[arg-type]
        conversation_id=conversation.pk,
        token=request.POST.get("token") or None,
    )
    messages.success(
        request,
        f"Revoked {n} link{'s' if n != 1 else ''}: {'it answers' if n == 1 else 'they answer'} “not found” now.",
    )
    return redirect(_next(request, reverse("account_settings") + "#sharing"))


@require_GET
def share_view(request: HttpRequest, token: str) -> HttpResponse:
    """A shared snapshot, for anyone with the link: read-only, no composer, not indexed."""
    link = account_selectors.live_share(token)
    replies = [m["content"] for m in link.messages if m["role"] == Message.Role.ASSISTANT]
    html = iter(rendering.render_many(replies))
    shown = [{**m, "html": next(html) if m["role"] == Message.Role.ASSISTANT else None} for m in link.messages]
    first = next((m["content"] for m in link.messages if m["role"] == Message.Role.USER), "")
    response = render(
        request, "accounts/share.html", {"link": link, "shared_messages": shown, "description": first[:200]}
    )
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Referrer-Policy"] = "no-referrer"  # the token never leaves in a Referer header
    return response


@login_required
@require_POST
def share_continue(request: HttpRequest, token: str) -> HttpResponse:
    """Copy a shared thread into a new conversation of the reader's, and open it."""
    link = account_selectors.live_share(token)
    try:
        continued = services.share_continue(link=link, user=request.user)  # type: ignore[arg-type]
    except importing.ImportFailed as exc:
        messages.error(request, exc.message)
        return redirect("share_view", token=token)
    messages.success(request, "The shared thread is now a conversation of yours: go on from here.")
    if continued.left_out:
        messages.warning(request, continued.left_out)
    return redirect(continued.conversation)


# -- delete the account -------------------------------------------------------------------------------------
def _signed_in_recently(request: HttpRequest) -> bool:
    """The session's latest sign-in (any method: a provider's too) is a few minutes old at most.

    allauth's own check passes accounts that have no password at all; deleting one needs a fresh sign-in.
    """
    records = get_authentication_records(request, request.user)
    latest = max((r.get("at", 0) for r in records if isinstance(r, dict)), default=0)
    return time.time() - latest < allauth_settings.REAUTHENTICATION_TIMEOUT


@login_required
@require_http_methods(["GET", "POST"])
def account_delete(request: HttpRequest) -> HttpResponse:
    """GET: what will be deleted, and the confirmation. POST (with the password): delete, sign out."""
    user = request.user
    has_password = user.has_usable_password()  # type: ignore[union-attr]
    if request.method == "POST":
        if has_password:
            confirmed = user.check_password(request.POST.get("password", ""))
            error = "" if confirmed else "That is not your password. Nothing was deleted."
        else:
            confirmed = _signed_in_recently(request)
            error = "" if confirmed else "Sign in again first (below), then confirm. Nothing was deleted."
        if confirmed and request.POST.get("confirm") == "delete":
            services.account_delete(user=user)  # type: ignore[arg-type]
            logout(request)
            messages.success(request, "Your account and everything in it are deleted.")
            return redirect("account_login")
        context = {"error": error or "Tick the box to confirm. Nothing was deleted.", "has_password": has_password}
        return render(request, "accounts/delete.html", context, status=400)
    context = {
        "has_password": has_password,
        "recent": has_password or _signed_in_recently(request),
        "count": selectors.conversations_for_user(user).count(),  # type: ignore[arg-type]
    }
    return render(request, "accounts/delete.html", context)
