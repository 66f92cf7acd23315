"""The signed-in user's settings for every page (base.html sets data-theme from them), read only if used."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from .models import Profile


def _profile(request: HttpRequest) -> Profile:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return Profile()
    return Profile.objects.filter(user=user).only("theme", "display_name").first() or Profile()


def account(request: HttpRequest) -> dict[str, Any]:
    # Lazy: an htmx partial that never shows the theme costs no query.
    return {"profile": SimpleLazyObject(lambda: _profile(request))}
