"""Template context every page needs: the demo-model banner and the composer's limits."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest


def chat(request: HttpRequest) -> dict[str, Any]:
    return {
        "offline_demo": settings.CHAT_DEFAULT_MODEL.startswith("offline:"),
        "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS,
        "max_attachments": settings.CHAT_MAX_ATTACHMENTS,
        "max_upload_bytes": settings.CHAT_MAX_UPLOAD_MB * 1024 * 1024,
    }
