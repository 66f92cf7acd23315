"""ASGI entry point: HTTP through Django, websockets through Channels (exact Origin check; the chat socket
reads its own session)."""

from __future__ import annotations

import os
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chatsite import daphne_bodies, daphne_cycles, daphne_writes, gc_tuning  # noqa: E402
from chatsite.origin import SameOriginValidator  # noqa: E402
from conversations import timing  # noqa: E402
from conversations.generation import shutdown  # noqa: E402
from conversations.routing import websocket_urlpatterns  # noqa: E402

# Database work runs in threads beside the event loop. A thread that waits on the database or Redis
# gives up the GIL and, to get it back while the loop is busy streaming, waits out the switch
# interval (5 ms by default) after every round trip: a send of ten round trips took 50 ms under
# load. A shorter interval hands the GIL back sooner (docs/performance.md).
sys.setswitchinterval(float(os.environ.get("CHAT_GIL_SWITCH_INTERVAL", "0.001")))

# Under daphne: drain on SIGTERM, sweep stale replies at start-up (conversations/generation/shutdown.py),
# no upload parsed into memory by Twisted before Django streams it (chatsite/daphne_bodies.py), and a
# socket's text frames framed in one step and written at once instead of on the loop's next turn
# (chatsite/daphne_writes.py), and a closed socket's objects freed as it closes, not by the garbage
# collector's older generations under load (chatsite/daphne_cycles.py).
shutdown.install()
daphne_bodies.install()
daphne_cycles.install()
daphne_writes.install()
daphne_writes.install_frames()

# No AuthMiddlewareStack: its cookie, session and auth layers each kept a copy of the scope, and the
# session and user objects, for as long as a socket was open. The chat socket reads its session cookie
# and checks it with its conversation, in one database call (ChatConsumer.connect).
# With CHAT_LOOP_LAG set, the first connection starts the event loop's lag probe (conversations/timing.py).
application = timing.with_loop_lag(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": SameOriginValidator(URLRouter(websocket_urlpatterns)),
            # uvicorn's start and stop (daphne sends no lifespan events): the sweep and the drain.
            "lifespan": shutdown.lifespan,
        }
    )
)

# Everything loaded so far lives as long as the process: out of the collector's full walks (gc_tuning.py).
gc_tuning.settle(collect=True)
