"""The websocket handshake's Origin check, exact like Django's CSRF check: scheme, host and port.

Channels' `AllowedHostsOriginValidator` compares only the Origin's host name with `ALLOWED_HOSTS`,
so a page on `http://127.0.0.1:9999` could open `ws://127.0.0.1:8000`. Here the Origin must be the
request's own origin (its scheme, `https` for `wss` or behind `SECURE_PROXY_SSL_HEADER`, and its
`Host`, which must be in `ALLOWED_HOSTS`), or one of `CSRF_TRUSTED_ORIGINS` (with their
`https://*.example.com` wildcards), as for a POST form.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin1")
    return None


def _is_secure(scope: dict[str, Any]) -> bool:
    if scope.get("scheme") in ("wss", "https"):
        return True
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        header, value = proxy
        name = header.removeprefix("HTTP_").replace("_", "-").lower().encode()
        forwarded = _header(scope, name)
        return forwarded is not None and forwarded.split(",")[0].strip() == value
    return False


def _allowed_hosts() -> list[str]:
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:
        hosts = [".localhost", "127.0.0.1", "[::1]"]  # as Django's HttpRequest.get_host
    return hosts


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether the handshake's Origin is the request's own origin or a trusted one."""
    origin = _header(scope, b"origin")
    if not origin or origin == "null":
        return False
    origin = origin.lower()
    host = (_header(scope, b"host") or "").lower()
    domain, _ = split_domain_port(host)
    if host and domain and validate_host(domain, _allowed_hosts()):
        own = f"{'https' if _is_secure(scope) else 'http'}://{host}"
        if origin == own:
            return True
    trusted = [o.lower() for o in settings.CSRF_TRUSTED_ORIGINS]
    if origin in trusted:
        return True
    parsed = urlsplit(origin)
    for candidate in trusted:
        if "://*." not in candidate:
            continue
        scheme, suffix = candidate.split("://*.", 1)
        if parsed.scheme == scheme and parsed.netloc.endswith("." + suffix):
            return True
    return False


class SameOriginValidator:
    """ASGI middleware: refuse a websocket whose Origin is not allowed (see the module's docstring)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            denier = WebsocketDenier()
            return await denier(scope, receive, send)
        return await self.application(scope, receive, send)
