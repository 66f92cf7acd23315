"""Chat pages, and the small partials htmx swaps into them."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("healthz", views.healthz, name="healthz"),
    path("conversations/new/", views.conversation_new, name="conversation_new"),
    path("conversations/sidebar/", views.sidebar, name="sidebar"),
    path("conversations/<uuid:conversation_id>/", views.conversation_detail, name="conversation"),
    path("conversations/<uuid:conversation_id>/item/", views.conversation_item, name="conversation_item"),
    path("conversations/<uuid:conversation_id>/rename/", views.conversation_rename, name="conversation_rename"),
    path("conversations/<uuid:conversation_id>/pin/", views.conversation_pin, name="conversation_pin"),
    path("conversations/<uuid:conversation_id>/delete/", views.conversation_delete, name="conversation_delete"),
    path(
        "conversations/<uuid:conversation_id>/messages/<int:message_id>/",
        views.message_detail,
        name="message_detail",
    ),
]
