from __future__ import annotations

from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "conversations"
    verbose_name = "Chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import post_delete, post_save

        from . import sockets

        # A user's open sockets, in every process, close when they sign out, are deactivated or deleted.
        user_logged_out.connect(sockets.on_logged_out, dispatch_uid="chat-sockets-logout")
        post_save.connect(sockets.on_user_saved, sender=get_user_model(), dispatch_uid="chat-sockets-user-saved")
        post_delete.connect(sockets.on_user_deleted, sender=get_user_model(), dispatch_uid="chat-sockets-user-deleted")
