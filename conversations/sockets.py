"""Tells open websockets, in every process, that what they show is gone: a deleted conversation, or
a user who signed out, was deactivated or deleted (their sockets check their session and close).

Also the check itself: a socket's session signs in an active user with the same password (Django's
session auth hash), when it connects and on every `send` and `regenerate`.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Mapping
from importlib import import_module
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.contrib.auth.backends import ModelBackend
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.http.cookie import parse_cookie
from django.utils import timezone
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
    """Whether the session still signs in this user: what `session_user` finds, in one read where the
    sessions are in the database (`_signed_in_one_read`), else as `session_user` finds it."""
    if not session_key:
        return False
    fast = _signed_in_one_read(session_key, user_id)
    if fast is not None:
        return fast
    user = session_user(session_key)
    return user is not None and user.pk == user_id


def _signed_in_one_read(session_key: str, user_id: int) -> bool | None:
    """`signed_in` for sessions in the database and a backend that finds users as ModelBackend does (an
    active user by id): the session's row and the user's password and active flag in one query, where
    `session_user` reads them in two (every `send` checks: docs/performance.md). None where that does
    not hold, for `session_user` to answer."""
    if settings.SESSION_ENGINE != "django.contrib.sessions.backends.db":
        return None
    sql = _session_and_user_sql()
    if sql is None:
        return None
    now = Session._meta.get_field("expire_date").get_db_prep_value(timezone.now(), connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [user_id, session_key, now])
        row = cursor.fetchone()
    if row is None:
        return False  # no such session, or it expired
    data, password, is_active = row
    session = SessionStore().decode(data)
    backend = session.get(BACKEND_SESSION_KEY)
    if backend not in settings.AUTHENTICATION_BACKENDS:
        return False
    found = type(load_backend(backend))
    if not (
        issubclass(found, ModelBackend)
        and found.get_user is ModelBackend.get_user
        and found.user_can_authenticate is ModelBackend.user_can_authenticate
    ):
        return None
    User = get_user_model()
    try:
        if User._meta.pk.to_python(session.get(SESSION_KEY)) != user_id:
            return False
    except ValidationError:
        return False
    if password is None or not is_active:
        return False  # deleted or deactivated
    session_hash = session.get(HASH_SESSION_KEY)
    user = User(pk=user_id, password=password)
    return bool(session_hash) and constant_time_compare(str(session_hash), user.get_session_auth_hash())


@functools.cache
def _session_and_user_sql() -> str | None:
    """`_signed_in_one_read`'s query (params: the user's id, the session key, now), or None for a user
    model without a password."""
    from .models import quoted

    User = get_user_model()
    names = {f.name for f in User._meta.concrete_fields}
    if "password" not in names:
        return None
    qn = connection.ops.quote_name
    active = f"u.{quoted(User, 'is_active')}" if "is_active" in names else "1"
    return (
        f"SELECT s.{quoted(Session, 'session_data')}, u.{quoted(User, 'password')}, {active}"  # noqa: S608 - names from the models
        f" FROM {qn(Session._meta.db_table)} s LEFT JOIN {qn(User._meta.db_table)} u ON u.{quoted(User, 'pk')} = %s"
        f" WHERE s.{quoted(Session, 'pk')} = %s AND s.{quoted(Session, 'expire_date')} > %s"
    )


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
