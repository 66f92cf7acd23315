"""What stays in memory: the task worker starts without the site's views and what they import, and an
open socket keeps its session key and conversation, not a session, a user or a cache object of its own."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import subprocess
import sys

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.sessions.backends.base import SessionBase
from django.core.cache.backends.base import BaseCache

from conversations import limits, presence
from tests.conftest import open_socket
from tests.factories import make_conversation
from tests.live import ROOT, server_env

pytestmark = pytest.mark.django_db(transaction=True)

SOCKETS = 8


def alive(cls: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, cls))


def test_the_worker_starts_without_the_views_and_their_imports():
    # `manage.py db_worker --batch` on the test database: starts, finds nothing to do, returns; then
    # the process says what it imported.
    code = (
        "import sys; sys.argv = ['manage.py', 'db_worker', '--batch', '--no-startup-delay', '--no-reload'];"
        "from django.core.management import execute_from_command_line; execute_from_command_line(sys.argv);"
        "print(' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    modules = set(done.stdout.split())
    assert "conversations.management.commands.db_worker" in modules  # ours: no system checks
    assert "django_tasks_db.management.commands.db_worker" in modules
    # The URLconf (and every view) came with the system checks; Pillow and pdfium with the upload
    # views; `requests` with the OpenID Connect provider; Twisted with daphne's app.
    for module in ("chatsite.urls", "conversations.views", "markdown_it", "PIL", "pypdfium2", "requests", "twisted"):
        assert module not in modules, f"the worker imported {module} at start"


@pytest.mark.parametrize("redis_url", ["", "redis://127.0.0.1:6379/0"], ids=["in-memory", "redis"])
def test_a_server_imports_only_the_channel_layer_it_uses(redis_url):
    # The ASGI application and its channel layer, as a server process loads them (no connection is
    # made). One process on the in-memory layer loads no Redis client; neither layer loads cryptography's
    # Rust bindings (channels-redis's serializers import them only for encryption the site never sets),
    # and cryptography's Fernet still imports afterwards for anything that asks for it.
    code = (
        "import sys; import chatsite.asgi; from channels.layers import get_channel_layer;"
        "layer = get_channel_layer(); print(type(layer).__name__);"
        "print(' '.join(sorted(sys.modules)));"
        "from cryptography.fernet import Fernet; print(Fernet.__name__)"
    )
    env = server_env(REDIS_URL=redis_url)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    layer, modules, fernet = done.stdout.splitlines()[-3:]
    modules_loaded = set(modules.split())
    assert fernet == "Fernet"
    assert "cryptography.hazmat.bindings._rust" not in modules_loaded
    if redis_url:
        assert layer == "RedisPubSubChannelLayer"
        assert "channels_redis.serializers" in modules_loaded
    else:
        assert layer == "InMemoryChannelLayer"
        for module in ("redis", "channels_redis", "conversations.layers.redis_pubsub"):
            assert module not in modules_loaded, f"the in-memory configuration imported {module}"


def test_a_redis_layer_given_encryption_keys_still_encrypts_in_a_fresh_process():
    # The serializers were imported without Fernet (above); a layer that is given keys gets it back.
    code = (
        "import chatsite.asgi; from conversations.layers.redis_pubsub import RedisPubSubChannelLayer;"
        "layer = RedisPubSubChannelLayer(hosts=['redis://127.0.0.1:6379/0'], symmetric_encryption_keys=['k']);"
        "data = layer.serialize({'type': 'chat.delta', 'text': 'secret'});"
        "print(b'secret' in data, layer.deserialize(data))"
    )
    env = server_env(REDIS_URL="redis://127.0.0.1:6379/0")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False {'type': 'chat.delta', 'text': 'secret'}"


async def test_open_sockets_keep_no_session_or_user_of_their_own(alice):
    conv = await sync_to_async(make_conversation)(alice)
    sockets = []
    try:
        for _ in range(SOCKETS):
            ok, ws = await open_socket(alice, conv.pk)
            assert ok
            assert (await ws.recv())["type"] == "state"
            sockets.append(ws)
        # Channels' auth middleware kept each socket's session and user, and copies of its scope.
        assert alive(SessionBase) < SOCKETS
        assert alive(AbstractBaseUser) < SOCKETS
    finally:
        for ws in sockets:
            await ws.close()


async def test_cache_calls_of_long_lived_tasks_share_one_cache_object(alice):
    # As sockets do: tasks that live on, each started in a context of its own (as the server starts
    # each socket's), counting itself in (async) and checking its rate (on the database thread, whose
    # context changes are copied back to the task). Django's `cache` keeps an object per context.
    release = asyncio.Event()
    counted: asyncio.Queue[None] = asyncio.Queue()

    async def socket_like() -> None:
        await presence.claim(alice.pk)
        await database_sync_to_async(limits.check_rate)(alice.pk)
        counted.put_nowait(None)
        await release.wait()
        await presence.release(alice.pk)

    tasks = [asyncio.create_task(socket_like(), context=contextvars.Context()) for _ in range(SOCKETS)]
    try:
        for _ in tasks:
            await asyncio.wait_for(counted.get(), 10)
        assert alive(BaseCache) < SOCKETS
    finally:
        release.set()
        await asyncio.gather(*tasks)
