"""Tells open websockets, in every process, that what they show is gone: a deleted conversation, or
a user who signed out, was deactivated or deleted (their sockets check their session and close).

Also the check itself: a socket's session is still signed in, to the same active user, with the
same password (Django's session auth hash), on every `send` and `regenerate`.
"""

from __future__ import annotations

import logging
import uuid
from importlib import import_module
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.db import transaction
from django.utils.crypto import constant_time_compare

log = logging.getLogger(__name__)


def user_group_name(user_id: int) -> str:
    """Every socket of a user listens on this group."""
    return f"user.{user_id}"


def signed_in(session_key: str | None, user_id: int) -> bool:
    """Whether the session still signs in this user, who is still active (a database read)."""
    if not session_key:
        return False
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    if str(store.get(SESSION_KEY)) != str(user_id):
        return False  # logged out (the session is gone or empty) or another user now
    user = get_user_model()._default_manager.filter(pk=user_id, is_active=True).first()
    if user is None:
        return False
    session_hash = store.get(HASH_SESSION_KEY)
    return bool(session_hash) and constant_time_compare(session_hash, user.get_session_auth_hash())


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
