"""Background work: the sweep of uploads never sent (thin: it calls the service).

django-tasks has no clock of its own: an upload queues a sweep for when it becomes an orphan
(unless one is already waiting), and a sweep that leaves unsent uploads queues the next one.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.utils import timezone
from django_tasks import TaskResultStatus, task
from django_tasks_db.models import DBTaskResult

from conversations.models import Attachment

from . import services

# A little after the deadline, so the uploads it was queued for are surely past it.
SLACK = dt.timedelta(minutes=5)


@task()
def sweep_orphans() -> int:
    """Delete uploads never sent within CHAT_ORPHAN_HOURS; returns how many."""
    swept = services.orphans_sweep()
    oldest = Attachment.objects.filter(message__isnull=True).order_by("created_at").first()
    if oldest is not None:
        schedule_sweep(oldest.created_at, force=True)
    return swept


def schedule_sweep(uploaded_at: dt.datetime | None = None, *, force: bool = False) -> None:
    """Queue a sweep for when an upload made at `uploaded_at` becomes an orphan, unless one is waiting."""
    waiting = DBTaskResult.objects.filter(task_path=sweep_orphans.module_path, status=TaskResultStatus.READY)
    if not force and waiting.exists():
        return
    run_after = (uploaded_at or timezone.now()) + dt.timedelta(hours=settings.CHAT_ORPHAN_HOURS) + SLACK
    sweep_orphans.using(run_after=run_after).enqueue()
