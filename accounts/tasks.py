"""Background imports (Django's tasks API): thin, the work is services.import_run."""

from __future__ import annotations

from django_tasks import task

from . import services


@task()
def run_import(job_id: str) -> str:
    """Import the file of one ImportJob."""
    return services.import_run(job_id).status
