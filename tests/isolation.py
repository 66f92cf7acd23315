"""A pytest plugin (`-p tests.isolation` in pyproject.toml): what every test run sets before Django loads.

Loaded while pytest reads its options, before pytest-django imports the settings, so what it puts in
the environment is what the settings (and every server process a test starts) read:

- `CHAT_IGNORE_DOTENV=1`: a developer's `.env` (API keys, DATABASE_URL, REDIS_URL, DEBUG) never leaks
  into a test run; the database and Redis come from the command's environment only.
- Under pytest-xdist, each worker gets its own Redis database (the one in REDIS_URL plus the worker's
  number), as it gets its own test database: a test that clears the cache, or counts a user's
  messages, never sees another worker's keys.
- `REDIS_PREFIX` names this run (its process id): runs side by side on one Redis (two developers, CI
  jobs) never see each other's cache keys or channel-layer messages either (pub/sub channels ignore
  the database number). Server processes a test starts inherit it, and so share this run's keys.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

os.environ["CHAT_IGNORE_DOTENV"] = "1"


def redis_url_for_worker(url: str, worker: str) -> str:
    """`redis://host:port/N` for xdist worker `gwK` -> `redis://host:port/(N+K)`."""
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{base + int(worker.removeprefix('gw'))}"))


# The run's id: the controller's process id (xdist workers inherit it), never a prefix from outside.
os.environ["REDIS_PREFIX"] = f"test{os.environ.setdefault('CHAT_TEST_RUN', str(os.getpid()))}:"

_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker and os.environ.get("REDIS_URL"):
    os.environ["REDIS_URL"] = redis_url_for_worker(os.environ["REDIS_URL"], _worker)
