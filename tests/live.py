"""Real server processes for tests: daphne (and the task worker) on the test database, over loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_url() -> str:
    """A DATABASE_URL for the database the running tests use (SQLite file or PostgreSQL)."""
    s = connection.settings_dict
    if s["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


test_database_url.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


def server_env(**overrides: str) -> dict[str, str]:
    """The environment of a server process: the test database, the same Redis, fast settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "DATABASE_URL": test_database_url(),
            "DEBUG": "true",
            "CHAT_RATE_LIMIT": "1000/m",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def server_command(server: str, port: int, app: str) -> list[str]:
    """daphne, as `make run` starts it, or uvicorn with the README's production options."""
    if server == "daphne":
        return [sys.executable, "-m", "chatsite.serve", "-b", "127.0.0.1", "-p", str(port), app]
    if server == "uvicorn":
        options = ["--lifespan", "on", "--ws-max-size", "1048576", "--proxy-headers", "--no-access-log"]
        return [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), *options, app]
    raise ValueError(f"unknown server {server!r}")


class LiveServer:
    """One daphne (or uvicorn) process serving the site on a free loopback port."""

    def __init__(
        self,
        log_dir: Path,
        name: str = "daphne",
        app: str = "chatsite.asgi:application",
        server: str = "daphne",
        **env: str,
    ) -> None:
        self.app = app
        self.server = server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.env = server_env(**env)
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> LiveServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            server_command(self.server, self.port, self.app),
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server} exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.server} did not answer in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """kill -9: no cleanup of any kind, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class Worker:
    """`manage.py db_worker` on the test database."""

    def __init__(self, log_dir: Path, **env: str) -> None:
        self.env = server_env(**env)
        self.log_path = log_dir / f"worker-{os.getpid()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "db_worker", "--interval", "0.2", "--no-startup-delay"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
