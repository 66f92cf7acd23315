"""A scratch copy of the site for the benchmarks that run its code in one process (`send_path.py`,
`usage_page.py`): Django set up on a database of their own, migrated."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def scratch_site(database_url: str, sqlite_name: str, **env: str) -> Iterator[None]:
    """Django set up and migrated on `database_url` (an empty database of its own), or on SQLite in a
    temporary directory (file `sqlite_name`) removed afterwards; no Redis; `env`: more settings."""
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(
            {
                "DJANGO_SETTINGS_MODULE": "chatsite.settings",
                "DATABASE_URL": database_url or f"sqlite:///{tmp}/{sqlite_name}",
                "LOG_LEVEL": "WARNING",
                **env,
            }
        )
        os.environ.pop("REDIS_URL", None)
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        yield
