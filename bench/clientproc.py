"""One phase's streams split across several client processes, so the load client and the floor reader
do not saturate a core before the site does (`--client-procs K`).

Slot i of the phase's N goes to process i % K. Each process (`python -m bench.clientproc`, its own
asyncio loop, sockets and sessions) gets its share as one JSON line on stdin, gets ready (the site's
sockets opened and their `state` read, or the floor's reader warmed), says so, and waits for the
shared start time: slot i sends at start + ramp * i / N, whichever process has it. It then writes
its StreamResults and the CPU seconds it spent from the start to the last reply, one JSON line on
stdout. Every wait is bounded: a process that dies, or says nothing in time, is killed, and its
streams are reported failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from . import client as C
from .procs import PYTHON, ROOT

# How long a process may take to get ready: starting Python, importing, opening its sockets.
READY_SECONDS = 60.0
# Between the last `ready` and the shared start: the `go` line reaches every process first.
START_DELAY = 0.05


@dataclasses.dataclass
class Outcome:
    """A phase run across processes: every stream's result, in slot order, and the processes' CPU."""

    results: list[C.StreamResult]
    cpu_s: float
    failures: list[str]


class Phase:
    """K client processes, each ready to run its share of one phase."""

    def __init__(self, spec: dict[str, Any], n: int, k: int, log_dir: Path) -> None:
        self.spec, self.n, self.k, self.log_dir = spec, n, max(1, min(k, n)), log_dir
        self.slots = [list(range(j, n, self.k)) for j in range(self.k)]
        self.procs: list[asyncio.subprocess.Process] = []
        self.failed: dict[int, str] = {}  # process -> why its streams failed

    async def start(self, users: list[dict[str, Any]] | None = None) -> None:
        """Start the processes and wait until each is ready (or has failed)."""
        for j, slots in enumerate(self.slots):
            share = {**self.spec, "n": self.n, "slots": slots}
            if users is not None:
                share["users"] = [users[i] for i in slots]
            log = open(self.log_dir / f"client-{j}.log", "ab")  # noqa: SIM115 - the child holds it
            proc = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "bench.clientproc", cwd=ROOT, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=log, limit=1 << 30,
            )  # fmt: skip
            log.close()
            assert proc.stdin is not None
            proc.stdin.write(orjson.dumps(share) + b"\n")
            self.procs.append(proc)
            with contextlib.suppress(ConnectionError):
                await proc.stdin.drain()
        readies = await asyncio.gather(*(self._read(j, READY_SECONDS + 0.1 * self.n) for j in range(self.k)))
        for j, line in enumerate(readies):
            if line is not None and not line.get("ready"):
                self._fail(j, f"client process not ready: {line.get('error', line)}")

    async def run(self, timeout: float) -> Outcome:
        """Start every process's share at one shared time; collect the results within `timeout` (+ slack)."""
        start = time.time() + START_DELAY
        for j, proc in enumerate(self.procs):
            if j in self.failed:
                continue
            assert proc.stdin is not None
            try:
                proc.stdin.write(orjson.dumps({"go": start}) + b"\n")
                await proc.stdin.drain()
            except (ConnectionError, RuntimeError) as exc:
                self._fail(j, f"client process gone: {exc}")
        lines = await asyncio.gather(*(self._read(j, timeout + 30) for j in range(self.k)))
        results: list[C.StreamResult] = [C.StreamResult() for _ in range(self.n)]
        cpu = 0.0
        for j, line in enumerate(lines):
            if line is not None and "results" in line:
                cpu += line["cpu_s"]
                for slot, r in zip(self.slots[j], line["results"], strict=True):
                    results[slot] = C.StreamResult(**r)
            else:
                if line is not None:
                    self._fail(j, f"client process answered {str(line)[:200]}")
                for slot in self.slots[j]:
                    results[slot] = C.StreamResult(error=self.failed[j])
        return Outcome(results, cpu, sorted(set(self.failed.values())))

    async def close(self) -> None:
        """Let each process close its sockets and exit; kill what is still there after a few seconds."""
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def _read(self, j: int, timeout: float) -> dict[str, Any] | None:
        """Process j's next line, or None (and its streams marked failed) if it died or was too slow."""
        if j in self.failed:
            return None
        stdout = self.procs[j].stdout
        assert stdout is not None
        try:
            line = await asyncio.wait_for(stdout.readline(), timeout)
        except TimeoutError:
            self._fail(j, f"client process silent for {timeout:.0f} s: killed")
            return None
        if not line:
            rc = await self.procs[j].wait()
            self._fail(j, f"client process exited ({rc}): see client-{j}.log")
            return None
        return orjson.loads(line)

    def _fail(self, j: int, why: str) -> None:
        self.failed.setdefault(j, why)
        proc = self.procs[j]
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


# -- the child -------------------------------------------------------------------------------------
def _say(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


async def _child() -> None:
    loop = asyncio.get_running_loop()
    share = orjson.loads(await loop.run_in_executor(None, sys.stdin.buffer.readline))
    slots, n, timeout = share["slots"], share["n"], share["timeout"]
    http = floor = None
    sockets: list[Any] = []
    try:
        try:
            if share["kind"] == "site":
                http = C.new_session()
                sockets = await C.connect_many(http, share["ports"], share["users"], slots=slots)
                pairs = zip(slots, sockets, strict=True)
                jobs = [(i, functools.partial(C.site_stream, ws, timeout)) for i, ws in pairs]
            else:
                floor = C.Floor(share["kind"], share["provider_port"])
                await floor.warm()
                jobs = [(i, functools.partial(floor.stream, timeout)) for i in slots]
        except Exception as exc:
            _say({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
            return
        _say({"ready": True})
        go = await loop.run_in_executor(None, sys.stdin.buffer.readline)
        if not go:
            return  # the parent gave up on the phase
        cpu0 = time.process_time()
        results = await C.spread(jobs, n, ramp=share["ramp"], start=orjson.loads(go)["go"])
        cpu = time.process_time() - cpu0
        _say({"cpu_s": cpu, "results": [dataclasses.asdict(r) for r in results]})
    finally:
        await C.close_many(sockets)
        if http is not None:
            await http.close()
        if floor is not None:
            await floor.aclose()


if __name__ == "__main__":
    asyncio.run(_child())
