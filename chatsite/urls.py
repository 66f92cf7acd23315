"""Top-level URLs: accounts, admin, the chat."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("accounts/", include("allauth.urls")),
    path("admin/usage/", include("usage.urls")),
    path("admin/", admin.site.urls),
    path("", include("api.urls")),
    path("", include("accounts.urls")),
    path("", include("attachments.urls")),
    path("", include("conversations.urls")),
]
