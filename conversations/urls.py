"""Chat pages."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("healthz", views.healthz, name="healthz"),
    path("conversations/new/", views.conversation_new, name="conversation_new"),
    path("conversations/<uuid:conversation_id>/", views.conversation_detail, name="conversation"),
]
