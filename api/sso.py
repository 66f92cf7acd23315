"""Single sign-on: who may sign up, and the identity provider's groups claim -> Django groups."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

if TYPE_CHECKING:
    from allauth.socialaccount.models import SocialLogin
    from django.contrib.auth.models import AbstractBaseUser
    from django.http import HttpRequest

log = logging.getLogger(__name__)

MAX_GROUP_NAME = 150  # Group.name's length


class AccountAdapter(DefaultAccountAdapter):
    """Local sign-up only when ACCOUNT_ALLOW_SIGNUP is on; failed logins counted per account."""

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return bool(settings.ACCOUNT_ALLOW_SIGNUP)

    def _get_login_attempts_cache_key(self, request: HttpRequest, **credentials: Any) -> str:
        # allauth counts LOGIN_RATE_LIMIT's "/key" part per login string: "alice", "ALICE" and
        # "alice@example.com" were three counters for one account. One account, one counter; a login
        # that names no single account keeps allauth's key. (allauth's hook for this key is private:
        # tests/test_limits.py fails loudly if an upgrade renames it.)
        login = str(credentials.get("email") or credentials.get("username") or "").strip()
        user = account_named(login)
        if user is None:
            return super()._get_login_attempts_cache_key(request, **credentials)
        return f"{super()._get_login_attempts_cache_key(request)}account:{user.pk}"


def account_named(login: str) -> AbstractBaseUser | None:
    """The one account a login string names (username or email, any case), or None."""
    from allauth.account.utils import filter_users_by_email

    if not login:
        return None
    User = get_user_model()
    users = list(User.objects.filter(**{f"{User.USERNAME_FIELD}__iexact": login})[:2])
    if not users and "@" in login:
        users = filter_users_by_email(login)
    return users[0] if len(users) == 1 else None


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    """Sign-up through the identity provider stays open; groups follow its claim at every sign-in."""

    def is_open_for_signup(self, request: HttpRequest, sociallogin: SocialLogin) -> bool:
        return True

    def pre_social_login(self, request: HttpRequest, sociallogin: SocialLogin) -> None:
        # An existing user (by their linked account, or by a verified email): sync before they are in.
        if sociallogin.user is not None and sociallogin.user.pk:
            sync_groups(sociallogin.user, sociallogin.account.extra_data)

    def save_user(self, request: HttpRequest, sociallogin: SocialLogin, form: Any = None) -> AbstractBaseUser:
        user = super().save_user(request, sociallogin, form)
        sync_groups(user, sociallogin.account.extra_data)
        return user


def claimed_groups(extra_data: dict[str, Any]) -> list[str] | None:
    """Group names in the configured claim (userinfo first, then the ID token); None when not configured."""
    claim = settings.OIDC_GROUPS_CLAIM
    if not claim:
        return None
    value: Any = None
    for source in (extra_data.get("userinfo"), extra_data.get("id_token"), extra_data):
        if isinstance(source, dict) and claim in source:
            value = source[claim]
            break
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        # The claim missing: the identity provider puts this user in no group.
        return []
    names = {str(v).strip()[:MAX_GROUP_NAME] for v in value if isinstance(v, str | int) and str(v).strip()}
    return sorted(names)


@transaction.atomic
def sync_groups(user: AbstractBaseUser, extra_data: dict[str, Any]) -> None:
    """Make the user's groups exactly the claim's (groups are created as needed)."""
    names = claimed_groups(extra_data)
    if names is None:
        return
    groups = []
    for name in names:
        group, _ = Group.objects.get_or_create(name=name)
        groups.append(group)
    user.groups.set(groups)  # type: ignore[attr-defined]
    log.info("sso: %s is now in groups %s", user.get_username(), names)
