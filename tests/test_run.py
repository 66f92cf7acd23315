"""`make run`'s launcher (bin/run.py): a taken port is refused with a clear message before anything
starts; Ctrl-C stops the worker and the server cleanly (no stray process, no crash)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.live import ROOT, free_port, server_env

pytestmark = pytest.mark.django_db(transaction=True)

LAUNCHER = [sys.executable, str(ROOT / "bin" / "run.py"), "--host", "127.0.0.1"]


def children_of(pid: int) -> list[int]:
    """Every process below `pid` (they run in sessions of their own, so walk parents)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    parents = {int(c): int(p) for c, p in (line.split() for line in out.splitlines())}
    found, frontier = [], {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier}
        found += frontier
    return found


def running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_it_refuses_a_taken_port_and_names_the_way_out():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*LAUNCHER, "--port", str(port)], cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=30
        )
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is not available" in done.stderr
    assert f"make run PORT={port + 1}" in done.stderr
    assert "Starting" not in done.stdout  # nothing was started


def test_it_runs_the_worker_and_the_server_and_stops_both_on_ctrl_c(tmp_path):
    port = free_port()
    log = open(tmp_path / "run.log", "wb+")  # noqa: SIM115
    proc = subprocess.Popen([*LAUNCHER, "--port", str(port)], cwd=ROOT, env=server_env(), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while b"Ctrl-C stops it" not in (tmp_path / "run.log").read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
        kids = children_of(proc.pid)
        commands = subprocess.run(["ps", "-o", "args=", "-p", ",".join(map(str, kids))], capture_output=True, text=True)
        assert "db_worker" in commands.stdout and "chatsite.serve" in commands.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    output = (tmp_path / "run.log").read_text()
    assert "Stopped." in output and "Segmentation fault" not in output and "Traceback" not in output, output
    time.sleep(0.5)
    alive = [pid for pid in kids if running(pid)]
    assert not alive, f"still running after Ctrl-C: {alive}"
