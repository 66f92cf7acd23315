"""daphne on uvloop, for the benchmark's `uvloop` variant: `python -m bench.uvloop_daphne [daphne's arguments]`.

daphne makes the event loop its Twisted reactor runs on when `daphne.server` is imported, before the
site's code is, so the loop's kind is chosen here, first. Tried as the site's default and left off: it
did not lower the server's CPU per token (docs/performance.md, "Seventh session").
"""

from __future__ import annotations

import asyncio
import sys

from chatsite import serve


def main() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    serve.import_daphne(sys.argv[1:])  # as the site starts daphne (chatsite/serve.py)
    from daphne import server  # made the reactor's loop, now uvloop's
    from daphne.cli import CommandLineInterface

    kind = type(server.twisted_loop)
    print(f"Event loop: {kind.__module__}.{kind.__qualname__}", file=sys.stderr, flush=True)
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
