"""The processes a benchmark run starts (fake provider, daphne, task worker), its databases, and
what /proc says about a process (CPU seconds, RSS)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/9"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15 of stat)


def children_of(pid: int) -> list[int]:
    """The child processes of `pid`."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(x) for x in f.read().split()]
    return found


def rss_bytes(pid: int) -> int:
    """Resident set size now, in bytes."""
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water RSS (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent not idle (all processes, ours and others')."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def infra_pids() -> list[int]:
    """PostgreSQL's and Redis's processes: the site's CPU spent outside Python."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            if name.startswith(("postgres", "redis-server")):
                pids.append(int(entry))
    return pids


def infra_cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited early:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers, even if not 200
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


SERVERS = ("daphne", "uvicorn", "granian")


def server_command(server: str, port: int, app: str, variants: str = "") -> list[str]:
    """One ASGI server process serving `app` on 127.0.0.1:`port`. daphne is what `make run` starts;
    uvicorn and granian run the same Channels application unchanged (the benchmark compares them):
    one worker each, their default event loop (uvloop when installed), no access log; uvicorn as the
    README's production option runs it, with lifespan on (the site's start-up sweep and drain)."""
    host = "127.0.0.1"
    if server == "daphne":
        # daphne as `make run` starts it (chatsite/serve.py); the `stock-daphne` variant: as `daphne` starts
        # itself; the `uvloop` variant: on uvloop (bench/uvloop_daphne.py), the loop chosen before it starts.
        chosen = variants.split(",")
        launcher = (
            "bench.uvloop_daphne" if "uvloop" in chosen else "daphne" if "stock-daphne" in chosen else "chatsite.serve"
        )
        return [PYTHON, "-m", launcher, "-b", host, "-p", str(port), app]
    if server == "uvicorn":
        return [PYTHON, "-m", "uvicorn", "--host", host, "--port", str(port), "--lifespan", "on", "--no-access-log",
                app]  # fmt: skip
    if server == "granian":
        return [PYTHON, "-m", "granian", "--interface", "asginl", "--host", host, "--port", str(port), "--workers", "1",
                app]  # fmt: skip
    raise ValueError(f"unknown server {server!r}: one of {', '.join(SERVERS)}")


@dataclass
class Proc:
    """A child process with its log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    # The process whose CPU and memory are measured: the one running the application (for granian,
    # its worker process; the parent only supervises it).
    app_pid: int | None = None

    def start(self) -> Proc:
        out = open(self.log, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        graceful = signal.SIGINT if self.name.startswith(("daphne", "uvicorn", "granian", "py-spy")) else signal.SIGTERM
        self.proc.send_signal(graceful)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def start_provider(tmp: Path, *, tokens: int, token_delay: float, name: str = "provider") -> tuple[Proc, int]:
    """The fake provider in stamp mode: `tokens` chunks `<i@ms> `, one every `token_delay` seconds."""
    port = free_port()
    args = [PYTHON, "-m", "tests.fakes.provider", "--port", str(port), "--stamp", str(tokens)]
    args += ["--token-delay", str(token_delay)]
    p = Proc(name, args, {**os.environ, "PYTHONUNBUFFERED": "1"}, tmp / f"{name}.log").start()
    wait_http(f"http://127.0.0.1:{port}/", p.proc, p.log)  # type: ignore[arg-type]
    return p, port


@dataclass
class Site:
    """One configuration of the site: a database, maybe Redis, its daphne processes and a worker."""

    kind: str  # "sqlite" or "postgres"
    tmp: Path
    provider_port: int
    variants: str = ""
    database_url: str = ""
    pg_name: str = ""
    daphnes: list[Proc] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    worker: Proc | None = None
    server: str = "daphne"  # the ASGI server: daphne (the site's), uvicorn or granian (compared)
    loop_lag: bool = False  # the server logs its event loop's lag (CHAT_LOOP_LAG; bench.run turns it on)
    extra_env: dict[str, str] = field(default_factory=dict)  # set last, over the site's own environment

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_", "CHAT_"))}
        env.pop("REDIS_URL", None)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "chatsite.settings",
                "DEBUG": "false",
                "SECRET_KEY": _secret_key(),
                "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "SECURE_SSL_REDIRECT": "false",
                "SESSION_COOKIE_SECURE": "false",
                "CSRF_COOKIE_SECURE": "false",
                "DATABASE_URL": self.database_url,
                "OPENAI_API_KEY": "x",
                "OPENAI_BASE_URL": f"http://127.0.0.1:{self.provider_port}/v1",
                "CHAT_DEFAULT_MODEL": "openai:bench",
                "CHAT_RATE_LIMIT": "100000/m",
                "CHAT_MAX_FRAMES_PER_10S": "100000",
                "PYTHONUNBUFFERED": "1",
                "LOG_LEVEL": "WARNING",
                "BENCH_VARIANTS": self.variants,
                # Each reply logs where its send's time went before the first token (conversations/timing.py).
                "CHAT_STAGE_TIMING": "1",
                # And how late its event loop fires a 5 ms timer, once a second (`loop-lag` lines, the same module).
                "CHAT_LOOP_LAG": "1" if self.loop_lag else "",
            }
        )
        if self.kind == "postgres":
            env["REDIS_URL"] = REDIS_URL
        return env | self.extra_env

    # -- the database ------------------------------------------------------------------------
    def create_database(self) -> None:
        if self.kind == "sqlite":
            self.database_url = f"sqlite:///{self.tmp / 'bench.sqlite3'}"
        else:
            import psycopg

            self.pg_name = f"bench_{os.getpid()}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {self.pg_name} WITH (FORCE)")
                conn.execute(f"CREATE DATABASE {self.pg_name}")
            self.database_url = f"postgres://postgres@127.0.0.1:5432/{self.pg_name}"
            _flush_redis()
        subprocess.run(
            [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=self.env(), check=True, timeout=300
        )

    def drop_database(self) -> None:
        if self.kind == "postgres" and self.pg_name:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {self.pg_name} WITH (FORCE)")
            _flush_redis()

    def sql(self, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run a query on the bench database from the bench process (its own connection)."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.database_url.removeprefix("sqlite:///"), timeout=30)
            try:
                rows = conn.execute(query.replace("%s", "?"), params).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.database_url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    # -- the processes -----------------------------------------------------------------------
    def start(self, processes: int = 1, *, worker: bool = True) -> None:
        env = self.env()
        app = "bench.variants:application" if self.variants else "chatsite.asgi:application"
        for i in range(processes):
            port = free_port()
            name = f"{self.server}{i}-{self.kind}-{port}"
            args = server_command(self.server, port, app, self.variants)
            self.daphnes.append(Proc(name, args, env, self.tmp / f"{name}.log").start())
            self.ports.append(port)
        for proc, port in zip(self.daphnes, self.ports, strict=True):
            wait_http(f"http://127.0.0.1:{port}/healthz", proc.proc, proc.log)  # type: ignore[arg-type]
            proc.app_pid = proc.pid
            if self.server == "granian":
                children = children_of(proc.pid)
                if len(children) != 1:
                    raise RuntimeError(f"granian should run one worker process, found {children}")
                proc.app_pid = children[0]
        if worker and self.worker is None:
            self.worker = Proc(
                f"worker-{self.kind}", [PYTHON, "manage.py", "db_worker"], env, self.tmp / f"worker-{self.kind}.log"
            ).start()

    def stop_daphnes(self) -> None:
        for proc in self.daphnes:
            proc.stop()
        self.daphnes, self.ports = [], []

    def stop(self) -> None:
        self.stop_daphnes()
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def check_alive(self) -> None:
        for proc in self.daphnes:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} died:\n{proc.log.read_text(errors='replace')[-3000:]}")


def _secret_key() -> str:
    key = os.environ.get("BENCH_SECRET_KEY")
    if not key:
        key = os.environ["BENCH_SECRET_KEY"] = secrets.token_urlsafe(50)
    return key


def _flush_redis() -> None:
    """Empty the bench's own Redis database (9): rate counters from an earlier run."""
    with contextlib.suppress(Exception):
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=2):
            pass
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        return True
    except Exception:
        return False
