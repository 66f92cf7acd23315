"""Under daphne: Twisted hands request bodies over unparsed, so an upload is never read whole into memory.

Twisted's HTTP server parses every `multipart/form-data` (and URL-encoded) POST body into
`request.args` itself, before daphne sees the request: the whole body read into one `bytes`
and parsed by the `email` package, about ten times the body's size at its peak (a 20 MB upload
took the process from 99 to 310 MiB; docs/performance.md, "Uploads"). Daphne never reads
`request.args`: it hands the raw body to Django, which parses it again, streaming, to temporary
files. Twisted's `Request` takes `parsePOSTFormSubmission=False` to skip its parse ("this can use
large amounts of memory for large uploads", its docstring says); daphne builds its requests
without it, so its request class is swapped for one that passes it.
"""

from __future__ import annotations

import inspect
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)


def install() -> bool:
    """Make daphne's HTTP requests skip Twisted's body parsing; True if done (under daphne, on a Twisted
    that has the option)."""
    module: Any = sys.modules.get("daphne.http_protocol")
    if module is None:
        return False  # not served by daphne
    from twisted.web import http

    if "parsePOSTFormSubmission" not in inspect.signature(http.Request.__init__).parameters:
        log.warning("this Twisted cannot be told not to parse uploads: each is read whole into memory")
        return False
    if getattr(module.WebRequest, "parses_bodies", True) is False:
        return True  # installed already

    class WebRequest(module.WebRequest):
        """daphne's request, with Twisted's parsing of form bodies turned off."""

        parses_bodies = False

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "parsePOSTFormSubmission": False})

    # daphne's HTTPFactory.buildProtocol looks the class up by this name for every connection.
    module.WebRequest = WebRequest
    return True
