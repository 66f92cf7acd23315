"""Websocket routes."""

from __future__ import annotations

from django.urls import path, re_path

from .consumers import ChatConsumer, RefusedConsumer

websocket_urlpatterns = [
    path("ws/conversations/<uuid:conversation_id>/", ChatConsumer.as_asgi()),
    # Anything else (`/ws/conversations/` without an id, say) is refused cleanly, not a 500.
    re_path(r"", RefusedConsumer.as_asgi()),
]
