#!/usr/bin/env python3
"""`make run`: the background worker and the ASGI server side by side; Ctrl-C stops both cleanly.

Refuses a port that is taken (before starting anything), says "running" only once the server
answers, and on Ctrl-C (or SIGTERM) asks both processes to stop with SIGTERM and waits for them
(a second Ctrl-C kills them). The children run in their own sessions, so the terminal's Ctrl-C
reaches only this script, which signals each child exactly once.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def server_command(host: str, port: int) -> list[str]:
    """The ASGI server: the one place that says how it is started."""
    return [sys.executable, "-m", "chatsite.serve", "-b", host, "-p", str(port), "chatsite.asgi:application"]


def worker_command() -> list[str]:
    """The task worker (summaries, titles)."""
    return [sys.executable, "manage.py", "db_worker"]


# How long the processes get to finish after SIGTERM (a running reply may take a while).
STOP_GRACE = float(os.environ.get("CHAT_SHUTDOWN_GRACE", "30")) + 10


def port_taken(host: str, port: int) -> str | None:
    """Why the port cannot be used, or None when it is free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as daphne does: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def stop(procs: list[subprocess.Popen[bytes]]) -> int:
    """SIGTERM to each child still running, then wait; a second Ctrl-C (or the grace running out) kills."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)  # the group: the worker's autoreloader has a child
    deadline = time.monotonic() + STOP_GRACE
    try:
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        print("Killing what is left.", flush=True)
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()
    host, port = args.host, args.port
    url = f"http://{host}:{port}/"

    reason = port_taken(host, port)
    if reason:
        print(
            f"Cannot start: port {port} on {host} is not available ({reason}). Another server (or an earlier "
            f"`make run`) is using it. Stop that one, or pick another port: make run PORT={port + 1}",
            file=sys.stderr,
        )
        return 2

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM both stop the site (SIGINT too when started in the background, where it is ignored).
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"Starting the background worker (manage.py db_worker) and daphne on {url}", flush=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(worker_command(), cwd=ROOT, start_new_session=True))
        server = subprocess.Popen(server_command(host, port), cwd=ROOT, start_new_session=True)
        procs.append(server)
        deadline = time.monotonic() + 60
        while not answers(host, port):
            if server.poll() is not None:
                print(f"The server exited (status {server.returncode}) before it answered on {url}.", file=sys.stderr)
                stop(procs)
                return 1
            if time.monotonic() > deadline:
                print(f"The server did not answer on {url} within 60 s.", file=sys.stderr)
                stop(procs)
                return 1
            time.sleep(0.2)
        print(f"The chat site is running at {url} (sign up at {url}accounts/signup/). Ctrl-C stops it.", flush=True)
        while True:
            for p in procs:
                if p.poll() is not None:
                    name = "server" if p is server else "worker"
                    print(f"The {name} exited (status {p.returncode}); stopping.", file=sys.stderr)
                    stop(procs)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nStopping the server and the worker...", flush=True)
        code = stop(procs)
        print("Stopped.", flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
