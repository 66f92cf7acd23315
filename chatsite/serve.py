"""daphne as the site starts it: `python -m chatsite.serve [daphne's arguments]`, e.g.
`python -m chatsite.serve -b 127.0.0.1 -p 8001 chatsite.asgi:application` (`make run` and the README's
deployment use it; `daphne ...` itself serves the same site, holding about 12 MB more per process).

daphne's import loads two things the site never uses, before any of the site's code runs:
- Twisted's TLS: `twisted.internet` imports pyOpenSSL, and with it cryptography's Rust bindings, when
  they are installed (daphne asks for them). The site serves plain HTTP behind a proxy that ends TLS
  (docs/operations.md). When an argument asks for an `ssl:` endpoint (`-e ssl:443:privateKey=...`),
  nothing is left out and daphne serves TLS as usual.
- autobahn's WAMP client: `autobahn.twisted`'s `__init__` imports it (and cryptography with it), while
  daphne's websockets need only `autobahn.twisted.websocket`. That `__init__` is deferred
  (chatsite/deferred.py): it runs if anything ever asks `autobahn.twisted` for a name.

pyOpenSSL is hidden for daphne's import only: anything that imports it afterwards gets it as usual.
`CHAT_LEAN_DAPHNE=0` leaves both out of it, as `daphne` would (the benchmark's `stock-daphne` variant).
"""

from __future__ import annotations

import os
import sys

from chatsite import deferred


def serves_tls(args: list[str]) -> bool:
    """Whether daphne's arguments ask for a TLS endpoint."""
    return any("ssl:" in arg for arg in args)


def import_daphne(args: list[str]) -> None:
    """Import daphne's command line (and with it Twisted's reactor), without what the site never uses."""
    if os.environ.get("CHAT_LEAN_DAPHNE", "1") == "0" or "daphne.cli" in sys.modules:
        import daphne.cli  # noqa: F401

        return
    deferred.defer("autobahn.twisted")
    hide = not serves_tls(args) and "OpenSSL" not in sys.modules
    if hide:
        sys.modules["OpenSSL"] = None  # type: ignore[assignment]  # Twisted takes it as not installed
    try:
        import daphne.cli  # noqa: F401
    finally:
        if hide and sys.modules.get("OpenSSL", False) is None:
            del sys.modules["OpenSSL"]


def main() -> None:
    import_daphne(sys.argv[1:])
    from daphne.cli import CommandLineInterface

    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
