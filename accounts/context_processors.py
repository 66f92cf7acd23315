"""The signed-in user's settings for every page (base.html sets data-theme from them), read only if used.

Every page shows them, so they come from the cache (services.profile_update clears it), not a query.
"""

from __future__ import annotations

from typing import Any

from django.core.cache import cache
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from .models import Profile

CACHE_TIMEOUT = 24 * 3600


def profile_cache_key(user_id: int) -> str:
    return f"account:profile:{user_id}"


def warm(user_id: int) -> tuple[str, str]:
    """Read the user's theme and display name into the cache (at sign-in, and on a miss)."""
    found = Profile.objects.filter(user_id=user_id).values_list("theme", "display_name").first()
    values = found or (Profile.Theme.SYSTEM, "")
    cache.set(profile_cache_key(user_id), values, CACHE_TIMEOUT)
    return values


def warm_on_login(sender: object, request: HttpRequest, user: Any, **kwargs: object) -> None:
    """Signed in: the pages that follow find the settings in the cache (no query per page)."""
    warm(user.pk)


def _profile(request: HttpRequest) -> Profile:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return Profile()
    theme, display_name = cache.get(profile_cache_key(user.pk)) or warm(user.pk)
    return Profile(theme=theme, display_name=display_name)


def account(request: HttpRequest) -> dict[str, Any]:
    # Lazy: an htmx partial that never shows the theme costs nothing.
    return {"profile": SimpleLazyObject(lambda: _profile(request))}
