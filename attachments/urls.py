"""Upload into a conversation; serve and remove by the attachment's id; serve within a share link."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("conversations/<uuid:conversation_id>/attachments/", views.upload, name="attachment_upload"),
    path("attachments/<uuid:attachment_id>/", views.serve, name="attachment"),
    path("attachments/<uuid:attachment_id>/remove/", views.remove, name="attachment_remove"),
    path("s/<str:token>/files/<uuid:attachment_id>/", views.shared, name="attachment_shared"),
]
