"""Test runs are isolated from a developer's `.env` and, under pytest-xdist, from each other's Redis keys."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from django.conf import settings

from tests.isolation import redis_url_for_worker

ROOT = Path(__file__).resolve().parent.parent


def _settings_seen(tmp_path: Path, **env: str) -> str:
    """OPENAI_API_KEY as chatsite/settings.py reads it in a project whose `.env` sets one."""
    project = tmp_path / "project"
    (project / "chatsite").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "chatsite" / "settings.py", project / "chatsite" / "settings.py")
    (project / "chatsite" / "__init__.py").touch()
    (project / ".env").write_text("OPENAI_API_KEY=sk-from-a-developers-dotenv\n")
    clean = {k: v for k, v in os.environ.items() if k not in {"CHAT_IGNORE_DOTENV", "OPENAI_API_KEY"}}
    out = subprocess.run(
        [sys.executable, "-c", "import chatsite.settings as s; print(s.OPENAI_API_KEY or '-')"],
        cwd=project,
        env={**clean, "PYTHONPATH": str(project), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def test_it_reads_dotenv_for_the_site_but_never_in_tests(tmp_path):
    assert _settings_seen(tmp_path) == "sk-from-a-developers-dotenv"
    assert _settings_seen(tmp_path, CHAT_IGNORE_DOTENV="1") == "-"
    # And this very run set it before the settings were loaded (tests/isolation.py).
    assert os.environ["CHAT_IGNORE_DOTENV"] == "1"
    assert os.environ.get("OPENAI_API_KEY", "") == settings.OPENAI_API_KEY


def test_it_gives_each_xdist_worker_its_own_redis_database():
    assert redis_url_for_worker("redis://127.0.0.1:6379/0", "gw0") == "redis://127.0.0.1:6379/0"
    assert redis_url_for_worker("redis://127.0.0.1:6379/0", "gw3") == "redis://127.0.0.1:6379/3"
    assert redis_url_for_worker("redis://:pw@redis:6380/2", "gw1") == "redis://:pw@redis:6380/3"
    assert redis_url_for_worker("redis://127.0.0.1:6379", "gw1") == "redis://127.0.0.1:6379/1"
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and settings.REDIS_URL:
        assert settings.REDIS_URL.endswith(f"/{int(worker.removeprefix('gw'))}")


def test_each_run_keeps_its_redis_keys_and_channels_apart():
    """Runs side by side on one Redis (pub/sub ignores the database number) use the run's own prefix."""
    assert os.environ["REDIS_PREFIX"] == f"test{os.environ['CHAT_TEST_RUN']}:" == settings.REDIS_PREFIX
    if settings.REDIS_URL:
        from django.core.cache import cache

        assert cache.make_key("chat:x").startswith(settings.REDIS_PREFIX)
        assert settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] == f"{settings.REDIS_PREFIX}asgi"
