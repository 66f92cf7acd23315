"""`manage.py db_worker`: django-tasks-db's worker, started without Django's system checks.

The checks import the URLconf, and with it every view and what the views use (the markdown
renderer, PDF and image processing, the admin's and allauth's views): about 10 MB the worker
never uses. `migrate` and `check --deploy`, run on every deploy (docs/operations.md), run them all.
"""

from __future__ import annotations

import argparse

from django_tasks_db.management.commands import db_worker


class Command(db_worker.Command):
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        # Still accepted, for command lines that pass it: there are no checks to skip.
        parser.add_argument("--skip-checks", action="store_true", help=argparse.SUPPRESS)
