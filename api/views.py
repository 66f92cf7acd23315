"""The API keys page: list, make (the key shown once) and revoke your own keys."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST

from . import keys
from .models import ApiKey


@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request: HttpRequest) -> HttpResponse:
    """GET: your keys. POST (field `name`): a new key, shown on this answer and never again."""
    new_key = None
    if request.method == "POST":
        _, new_key = keys.api_key_create(user=request.user, name=request.POST.get("name", ""))  # type: ignore[arg-type]
    rows = ApiKey.objects.filter(user=request.user).order_by("revoked_at", "-created_at")  # type: ignore[misc]
    response = render(
        request,
        "api/keys.html",
        {"keys": rows, "new_key": new_key, "max_name": keys.MAX_NAME},
        status=201 if new_key else 200,
    )
    add_never_cache_headers(response)  # the new key must not sit in a cache
    return response


@login_required
@require_POST
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    """Revoke one of your keys (someone else's is 404, like one that does not exist)."""
    key = get_object_or_404(ApiKey, pk=key_id, user=request.user)
    keys.api_key_revoke(key=key)
    messages.success(request, f"Revoked “{key.name}”. Programs using it now get 401.")
    return redirect("api_keys")
