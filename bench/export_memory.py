"""Memory of exporting a 10,000-message account as the streamed ZIP (docs/performance.md, "Export").

    .venv/bin/python -m bench.export_memory            # a fresh SQLite database in a temporary directory
    DATABASE_URL=postgres://... .venv/bin/python -m bench.export_memory

Prints RSS before and after, the tracemalloc peak while streaming, and the same for building the ZIP
in memory first (what the streamed download avoids).
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
import tracemalloc


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    tmp = tempfile.mkdtemp()
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{tmp}/bench.sqlite3")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    os.environ.setdefault("DEBUG", "true")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model

    from accounts import exporting
    from tests.test_export_memory import fill

    User = get_user_model()
    User.objects.filter(username="export-bench").delete()
    user = User.objects.create_user("export-bench", password="x")
    shapes = [(100, 100), (1, 10_000)]
    for conversations, per in shapes:
        from conversations.models import Conversation

        Conversation.objects.filter(owner=user).delete()
        text = fill(user, conversations, per)
        gc.collect()
        before = rss_mb()
        tracemalloc.start()
        started = time.perf_counter()
        size = sum(len(chunk) for chunk in exporting.account_zip(user))
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        after = rss_mb()
        gc.collect()
        tracemalloc.start()
        whole = b"".join(exporting.account_zip(user))
        _, naive_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del whole
        print(
            f"{conversations} x {per} messages, {text / 1e6:.1f} MB of text -> ZIP {size / 1e6:.1f} MB "
            f"in {elapsed:.1f} s: "
            f"streamed: RSS {before:.0f} -> {after:.0f} MB, tracemalloc peak {peak / 1e6:.2f} MB; "
            f"built in memory first: peak {naive_peak / 1e6:.1f} MB",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
