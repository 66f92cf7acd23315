"""What an idle daphne and the task worker hold: `python -m bench.memory [--configs sqlite,postgres]`.

For each configuration it starts the fake provider, the site (one daphne and the worker) and one seeded
user, then reads each process's RSS (and its USS, the pages no other process shares) 5 s after start,
and again 5 s after the user's first reply has ended: the idle process a team runs, before and after it
has imported a provider's SDK. `--churn N` then opens and closes N sockets `--rounds` times, reading
daphne's RSS after each round: memory that grows round after round is what closed sockets leave behind.
`--variants` passes BENCH_VARIANTS to daphne (bench/variants.py); `--server uvicorn` reads uvicorn (the
README's production option) in daphne's place. `--worker-task` leaves the user's thread untitled, so the
worker asks the model for a title after the first reply (its first task, which loads the SDK there too),
and reads the worker once that title is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from . import client as C
from .procs import PYTHON, ROOT, SERVERS, Site, postgres_available, rss_bytes, start_provider

MB = 1024 * 1024


def uss_bytes(pid: int) -> int:
    """Private pages (clean and dirty) from /proc/PID/smaps_rollup: what the process alone holds."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


# The user's thread untitled: the worker titles it after the first reply (conversations/tasks.py).
UNTITLED = """
import sys, django
django.setup()
from conversations.models import Conversation
Conversation.objects.filter(pk=sys.argv[1]).update(title="", title_is_auto=True)
"""
TITLED = """
import sys, django
django.setup()
from conversations.models import Conversation
print(Conversation.objects.get(pk=sys.argv[1]).title_is_auto)
"""


def sizes(pid: int) -> dict[str, float]:
    return {"rss_mb": rss_bytes(pid) / MB, "uss_mb": uss_bytes(pid) / MB}


async def one_reply(port: int, user: dict[str, Any]) -> C.StreamResult:
    async with C.new_session() as http:
        ws, _, _ = await C.connect(http, port, user)
        try:
            return await C.site_stream(ws, 60)
        finally:
            await ws.close()


async def churn(port: int, users: list[dict[str, Any]], rounds: int, pid: int, settle: float) -> list[float]:
    """Open a socket for every user and close them all, `rounds` times; daphne's RSS (MB) after each."""
    sizes_mb = []
    async with C.new_session() as http:
        for _ in range(rounds):
            sockets = await C.connect_many(http, [port], users, slots=[0] * len(users))
            await C.close_many(sockets)
            await asyncio.sleep(settle)
            sizes_mb.append(rss_bytes(pid) / MB)
    return sizes_mb


def measure(
    kind: str,
    tmp: Path,
    provider_port: int,
    variants: str,
    settle: float,
    sockets: int = 0,
    rounds: int = 0,
    server: str = "daphne",
    worker_task: bool = False,
) -> dict[str, Any]:
    site = Site(kind, tmp, provider_port, variants=variants, server=server)
    site.create_database()
    try:
        seed_path = tmp / f"seed-{kind}.json"
        subprocess.run(
            [PYTHON, "-m", "bench.seed", str(seed_path), "--users", str(max(1, sockets)), "--threads", ""],
            cwd=ROOT, env=site.env(), check=True, timeout=300,
        )  # fmt: skip
        users = json.loads(seed_path.read_text())["users"]
        user = users[0]
        if worker_task:
            subprocess.run([PYTHON, "-c", UNTITLED, user["conversation"]], cwd=ROOT, env=site.env(), check=True)
        site.start(1)
        assert site.worker is not None
        daphne, worker = site.daphnes[0].pid, site.worker.pid
        time.sleep(settle)
        out: dict[str, Any] = {"daphne_start": sizes(daphne), "worker_start": sizes(worker)}
        result = asyncio.run(one_reply(site.ports[0], user))
        if result.status != "complete":
            raise RuntimeError(f"the reply did not complete: {result.status} {result.error}")
        time.sleep(settle)
        out |= {"daphne_after_reply": sizes(daphne), "worker_after_reply": sizes(worker)}
        if worker_task:
            for _ in range(60):  # the worker's title, then its settle
                check = [PYTHON, "-c", TITLED, user["conversation"]]
                titled = subprocess.run(check, cwd=ROOT, env=site.env(), capture_output=True, text=True, check=True)
                if titled.stdout.strip() == "False":
                    break
                time.sleep(1)
            else:
                raise RuntimeError("the worker did not title the thread within a minute")
            time.sleep(settle)
            out["worker_after_task"] = sizes(worker)
        if sockets and rounds:
            out["churn_mb"] = asyncio.run(churn(site.ports[0], users, rounds, daphne, settle))
        return out
    finally:
        site.stop()
        site.drop_database()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="sqlite,postgres")
    parser.add_argument("--variants", default="")
    parser.add_argument("--server", default="daphne", choices=SERVERS, help="the ASGI server read as `daphne`")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait before each reading")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--churn", type=int, default=0, help="sockets to open and close in each round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of --churn")
    parser.add_argument("--worker-task", action="store_true", help="read the worker after its first task too")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    if "postgres" in configs and not postgres_available():
        print("PostgreSQL or Redis is not reachable: skipping postgres")
        configs.remove("postgres")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as d:
        tmp = Path(d)
        provider, port = start_provider(tmp, tokens=20, token_delay=0.01)
        try:
            for kind in configs:
                for rep in range(args.reps):
                    (tmp / f"{kind}{rep}").mkdir()
                    m = measure(
                        kind,
                        tmp / f"{kind}{rep}",
                        port,
                        args.variants,
                        args.settle,
                        args.churn,
                        args.rounds,
                        args.server,
                        args.worker_task,
                    )
                    rounds = m.pop("churn_mb", None)
                    cells = ", ".join(f"{k} {v['rss_mb']:.1f} MB RSS ({v['uss_mb']:.1f} USS)" for k, v in m.items())
                    if rounds:
                        cells += f"; daphne after each of {len(rounds)} rounds of {args.churn} sockets opened and "
                        cells += "closed: " + ", ".join(f"{mb:.1f}" for mb in rounds) + " MB"
                    label = ",".join(x for x in (args.variants, "" if args.server == "daphne" else args.server) if x)
                    print(f"{kind} run {rep + 1}{' [' + label + ']' if label else ''}: {cells}")
        finally:
            provider.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
