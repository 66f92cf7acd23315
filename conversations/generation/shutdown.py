"""A daphne process that is told to stop (SIGTERM, a deploy) drains instead of dropping its replies,
and a process that starts sweeps the rows a dead one left `streaming`.

On SIGTERM (and Ctrl-C) Twisted stops the reactor, which first runs its "before shutdown" triggers
and waits for the Deferreds they return. The one installed here:

1. stops taking sockets: the listening ports close (a load balancer or the page's reconnect goes to
   another process), and a socket that still gets through is refused at the handshake;
2. closes every open chat socket with code 4012 (this process is restarting): the page reconnects at once,
   to another process, and follows its reply there over the channel layer;
3. lets the running replies finish, for up to `CHAT_SHUTDOWN_GRACE` seconds;
4. then ends the rest at once: each stores the text it has, as `interrupted`, and sends `end`.

Installed from `chatsite/asgi.py` when the application is loaded by daphne (plain
`daphne chatsite.asgi:application`, `make run`). Under uvicorn (the production option in the README)
the same sweep and drain run from ASGI's lifespan events (`lifespan`, routed in `chatsite/asgi.py`):
on SIGTERM uvicorn stops listening and closes its sockets itself (code 1012, which the page treats
as 4012), waits for their consumers to end, then sends `lifespan.shutdown`, and the drain lets the
replies finish (3 and 4 above) before uvicorn exits. Other ASGI servers without lifespan events get
the start-up sweep from the first socket or reply, and no drain.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import weakref
from typing import TYPE_CHECKING, Any

from django.conf import settings

from . import registry
from .janitor import ensure_janitor, interrupt_stale
from .registry import spawn

if TYPE_CHECKING:
    from channels.generic.websocket import AsyncWebsocketConsumer

log = logging.getLogger(__package__)

# The close code of a socket whose process is shutting down: reconnect at once (to another process).
# Not 1012 ("service restart"): autobahn, daphne's websocket library, sends no code but 1000 and
# 3000-4999 (it raised, and the socket stayed open until the process exited).
CLOSE_RESTARTING = 4012
# Set once the process has started to shut down: new sockets are refused.
draining = False
# The open chat sockets of this process, to close when it drains.
sockets: weakref.WeakSet[AsyncWebsocketConsumer] = weakref.WeakSet()
_installed = False
# How long the replies get, after the grace, to store their text and send `end`.
FINISH_TIMEOUT = 10.0


def install() -> None:
    """Hook the drain and the start-up sweep into daphne's reactor, if daphne is what runs us."""
    global _installed
    reactor: Any = sys.modules.get("twisted.internet.reactor")
    if reactor is None or _installed:
        return
    _installed = True
    reactor.callWhenRunning(lambda: spawn(_started()))
    reactor.addSystemEventTrigger("before", "shutdown", _before_shutdown)


async def _started() -> None:
    """Sweep the rows a dead process (this one, before a crash) left `streaming`, then keep sweeping."""
    try:
        await interrupt_stale()
    except Exception:
        log.exception("start-up sweep of stale replies failed")
    ensure_janitor()


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI's lifespan events (uvicorn; daphne sends none): the start-up sweep, and the drain at shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            spawn(_started())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await drain()
            except Exception:
                log.exception("could not drain the running replies")
            await send({"type": "lifespan.shutdown.complete"})
            return


def _before_shutdown() -> Any:
    from twisted.internet import defer

    # The open sockets, taken now: daphne's own "before shutdown" trigger cancels every consumer at
    # once, and a cancelled consumer leaves `sockets` as it ends, possibly before `drain` first runs;
    # its socket would then stay open, silent, until the process exits.
    return defer.Deferred.fromFuture(asyncio.ensure_future(drain(consumers=list(sockets))))


async def drain(grace: float | None = None, consumers: list[AsyncWebsocketConsumer] | None = None) -> None:
    """Stop taking sockets, close the open ones (`consumers`, default those open now), let replies
    finish for `grace` seconds, interrupt the rest."""
    global draining
    draining = True
    grace = settings.CHAT_SHUTDOWN_GRACE if grace is None else grace
    _stop_listening()
    for consumer in {*(consumers or ()), *sockets}:
        spawn(_close(consumer))
    running = [g for g in registry.running.values() if g.task is not None]
    if not running:
        return
    log.info("shutting down: %s replies running, waiting up to %ss", len(running), grace)
    tasks = [g.task for g in running if g.task is not None]
    _, pending = await asyncio.wait(tasks, timeout=grace)
    if pending:
        log.warning("shutting down: %s replies still running after %ss: interrupted", len(pending), grace)
        for g in running:
            if g.task in pending:
                g.interrupt()
        _, pending = await asyncio.wait(pending, timeout=FINISH_TIMEOUT)
        if pending:
            log.error("shutting down: %s replies did not store their text in time", len(pending))


def _stop_listening() -> None:
    """Close the server's listening ports: new connections go to the other processes."""
    reactor: Any = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return
    from twisted.internet.interfaces import IListeningPort

    for reader in reactor.getReaders():
        if IListeningPort.providedBy(reader):
            try:
                reader.stopListening()
            except Exception:
                log.exception("could not stop listening on %r", reader)


async def _close(consumer: AsyncWebsocketConsumer) -> None:
    try:
        await consumer.close(code=CLOSE_RESTARTING)  # reconnect (elsewhere)
        await consumer.disconnect(CLOSE_RESTARTING)  # daphne cancels the consumer: clean up as a close would
    except Exception:
        log.exception("could not close a socket while shutting down")
