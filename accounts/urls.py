"""The account's pages, and the per-thread export and share endpoints (mounted at the site's root)."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("account/", views.account_settings, name="account_settings"),
    path("account/profile/", views.profile_save, name="account_profile"),
    path("account/theme/", views.theme_save, name="account_theme"),
    path("account/export/", views.export_account, name="account_export"),
    path("account/import/", views.import_upload, name="account_import"),
    path("account/imports/<uuid:job_id>/", views.import_status, name="account_import_status"),
    path("account/delete/", views.account_delete, name="account_delete"),
    path("conversations/<uuid:conversation_id>/export.md", views.export_markdown, name="conversation_export_md"),
    path("conversations/<uuid:conversation_id>/export.json", views.export_json, name="conversation_export_json"),
    path("conversations/<uuid:conversation_id>/share/", views.share_create, name="conversation_share"),
    path("conversations/<uuid:conversation_id>/share/revoke/", views.share_revoke, name="conversation_share_revoke"),
    path("s/<str:token>/", views.share_view, name="share_view"),
    path("s/<str:token>/continue/", views.share_continue, name="share_continue"),
]
