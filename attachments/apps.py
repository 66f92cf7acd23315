from __future__ import annotations

from django.apps import AppConfig


class AttachmentsConfig(AppConfig):
    """Uploads: the upload and serve views, sniffing, image and PDF processing, the orphan sweep."""

    name = "attachments"
    default_auto_field = "django.db.models.BigAutoField"
