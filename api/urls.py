"""The API keys page and the OpenAI-compatible endpoints."""

from __future__ import annotations

from django.urls import path

from . import v1, views

urlpatterns = [
    path("account/api-keys/", views.api_keys, name="api_keys"),
    path("account/api-keys/<int:key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
    path("v1/models", v1.models, name="api_models"),
    path("v1/models/<str:model_id>", v1.model_detail, name="api_model"),
    path("v1/chat/completions", v1.chat_completions, name="api_chat_completions"),
    path("v1/<path:rest>", v1.unknown, name="api_unknown"),
]
