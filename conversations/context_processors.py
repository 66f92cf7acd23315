"""Template context every page needs: the demo-model banner and the composer limit."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest


def chat(request: HttpRequest) -> dict[str, Any]:
    return {
        "offline_demo": settings.CHAT_DEFAULT_MODEL.startswith("offline:"),
        "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS,
    }
