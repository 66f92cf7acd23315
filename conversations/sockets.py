"""Tells open websockets, in every process, that what they show is gone: a deleted conversation, or
a user who signed out, was deactivated or deleted (their sockets check their session and close).

Also the check itself: a socket's session signs in an active user with the same password (Django's
session auth hash), when it connects and on every `send` and `regenerate`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from importlib import import_module
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.db import transaction
from django.http.cookie import parse_cookie
from django.utils.crypto import constant_time_compare

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser

log = logging.getLogger(__name__)


def user_group_name(user_id: int) -> str:
    """Every socket of a user listens on this group."""
    return f"user.{user_id}"


def handshake_session_key(scope: Mapping[str, Any]) -> str | None:
    """The session cookie of a websocket's handshake (its first `Cookie` header, as Channels reads it)."""
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            return parse_cookie(value.decode("latin1")).get(settings.SESSION_COOKIE_NAME) or None
    return None


def session_user(session_key: str | None) -> AbstractBaseUser | None:
    """The user the session signs in, as Django finds a request's (a database read): through the
    session's authentication backend (so only an active user), with the session's auth hash still
    matching the password. None if it signs in nobody."""
    if not session_key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user_id, backend = store.get(SESSION_KEY), store.get(BACKEND_SESSION_KEY)
    if user_id is None or backend not in settings.AUTHENTICATION_BACKENDS:
        return None  # logged out (the session is gone or empty), or by a backend no longer in use
    user = load_backend(backend).get_user(get_user_model()._meta.pk.to_python(user_id))
    if user is None:
        return None
    session_hash = store.get(HASH_SESSION_KEY)
    if not session_hash or not constant_time_compare(session_hash, user.get_session_auth_hash()):
        return None  # the password changed since
    return user


def signed_in(session_key: str | None, user_id: int) -> bool:
    """Whether the session still signs in this user (a database read)."""
    user = session_user(session_key)
    return user is not None and user.pk == user_id


def _publish(group: str, event: dict[str, Any]) -> None:
    try:
        async_to_sync(get_channel_layer().group_send)(group, event)
    except Exception:  # the sockets' own checks on every send still hold
        log.exception("could not tell the sockets of %s (%s)", group, event["type"])


def conversation_deleted(conversation_id: uuid.UUID) -> None:
    """Close every socket of a deleted conversation (any process)."""
    # Imported here: every process imports this module at start (apps.py), and `generation` brings the
    # reply's whole stack, which the task worker only needs once it runs a task.
    from .generation import group_name

    _publish(group_name(conversation_id), {"type": "chat.deleted"})


def user_changed(user_id: int, *, signed_out_session: str | None = None) -> None:
    """Have every socket of the user (any process) check its session, and close if it no longer signs
    in; sockets of `signed_out_session` close without checking (Django sends `user_logged_out`
    before it deletes the session, so a check made then would still find it)."""
    _publish(user_group_name(user_id), {"type": "chat.recheck", "session_key": signed_out_session})


# -- receivers (connected in apps.py) ---------------------------------------------------------------
def on_logged_out(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    if user is not None and user.pk is not None:
        session = getattr(request, "session", None)
        user_changed(user.pk, signed_out_session=session.session_key if session is not None else None)


def on_user_saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    if not created and not instance.is_active:
        # After the commit: a socket checking before it would still find the user active.
        user_id = instance.pk
        transaction.on_commit(lambda: user_changed(user_id))


def on_user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    user_id = instance.pk
    transaction.on_commit(lambda: user_changed(user_id))
