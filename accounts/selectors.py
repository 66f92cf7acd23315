"""Reads for the account pages: live share links, import jobs."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import Http404

from .models import ImportJob, ShareLink


def live_share(token: str) -> ShareLink:
    """A share link anyone may open, or Http404 (revoked, or never there)."""
    link = ShareLink.objects.filter(token=token, revoked_at__isnull=True).first()
    if link is None:
        raise Http404
    return link


def share_links_for_user(user: User) -> QuerySet[ShareLink]:
    """The user's live links, newest first, without their snapshots (the list shows titles only)."""
    return ShareLink.objects.filter(owner=user, revoked_at__isnull=True).defer("messages")


def import_job_for_user(user: User, job_id: uuid.UUID | str) -> ImportJob:
    """The user's own import job, or Http404."""
    job = ImportJob.objects.filter(pk=job_id, owner=user).first()
    if job is None:
        raise Http404
    return job


def import_jobs_for_user(user: User) -> QuerySet[ImportJob]:
    """The user's latest imports."""
    return ImportJob.objects.filter(owner=user)[:5]
