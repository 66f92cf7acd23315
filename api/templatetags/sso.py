"""Template tags for the sign-in pages."""

from __future__ import annotations

from django import template
from django.conf import settings

register = template.Library()


@register.simple_tag
def local_signup_open() -> bool:
    """Whether local sign-up is on (ACCOUNT_ALLOW_SIGNUP): the login page offers it only then."""
    return bool(settings.ACCOUNT_ALLOW_SIGNUP)
