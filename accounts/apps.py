from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"
    verbose_name = "Accounts: settings, export, import, share links"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from .context_processors import warm_on_login

        user_logged_in.connect(warm_on_login, dispatch_uid="accounts.warm_profile_cache")
