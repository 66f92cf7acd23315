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
        through_daphne(user, tmp)


def rss_of(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def through_daphne(user, tmp: str) -> None:
    """The same download from a real daphne process, its RSS sampled every 20 ms while it streams."""
    import threading
    import urllib.request
    from pathlib import Path

    from django.conf import settings
    from django.test import Client

    from tests.live import LiveServer

    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    db_name = settings.DATABASES["default"]["NAME"]
    server = LiveServer(Path(tmp), DATABASE_URL=os.environ["DATABASE_URL"] if "postgres" in os.environ["DATABASE_URL"]
                        else f"sqlite:///{db_name}", LOG_LEVEL="WARNING").start()  # fmt: skip
    try:
        pid = server.proc.pid  # type: ignore[union-attr]
        for attempt in ("warm-up", "measured"):
            before = rss_of(pid)
            peak = [before]
            done = threading.Event()

            def sample(peak: list[float] = peak, done: threading.Event = done) -> None:
                while not done.is_set():
                    peak.append(rss_of(pid))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            request = urllib.request.Request(f"{server.url}/account/export/", headers={"Cookie": f"sessionid={cookie}"})
            size = 0
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=600) as response:
                while chunk := response.read(64 * 1024):
                    size += len(chunk)
            elapsed = time.perf_counter() - started
            done.set()
            sampler.join()
            print(
                f"  daphne ({attempt}): ZIP {size / 1e6:.1f} MB in {elapsed:.1f} s; RSS {before:.0f} MB before, "
                f"{max(peak):.0f} MB at most while streaming, {rss_of(pid):.0f} MB after",
                flush=True,
            )
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
