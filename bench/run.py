"""The streaming benchmark: `python -m bench.run [--quick | --full | --ab]` (see bench/README.md).

It starts the fake provider in stamp mode, the site (daphne + the task worker) on SQLite with the
in-memory layer and on PostgreSQL with Redis, and N simulated users who each send one message on
their own thread and read the reply; in the same run it reads the same streams straight from the
provider (the floor: raw SSE, or the openai SDK's parsed stream). The users and the floor's readers
are split across `--client-procs` processes. Everything it starts, it stops; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import client as C
from .clientproc import Phase
from .procs import (
    PYTHON,
    ROOT,
    SERVERS,
    Proc,
    Site,
    cpu_seconds,
    infra_cpu_seconds,
    infra_pids,
    machine_busy_seconds,
    peak_rss_bytes,
    postgres_available,
    rss_bytes,
    start_provider,
)
from .report import render
from .stats import combine, loop_lag_summary, median, ratio, stage_summary, summarize_streams

MB = 1024 * 1024


PROVIDERS = ("openai", "anthropic")


def provider_env(provider: str, port: int) -> dict[str, str]:
    """The site's settings for replies through `provider`'s adapter, from the same fake provider."""
    if provider == "anthropic":
        base = f"http://127.0.0.1:{port}"
        return {"ANTHROPIC_API_KEY": "x", "ANTHROPIC_BASE_URL": base, "CHAT_DEFAULT_MODEL": "anthropic:bench"}
    return {}


@dataclass
class Plan:
    """What one run measures."""

    mode: str
    configs: list[str]
    ns: list[int]
    reps: int
    tokens: int
    token_delay: float
    ramp: float
    idle: int
    thread_lengths: list[int]
    thread_reps: int
    length_check_n: int
    multi: int
    multi_n: int
    ab_n: int = 200
    ab_variants: list[str] = field(default_factory=list)
    variants: str = ""  # BENCH_VARIANTS for the site outside --ab (bench/variants.py), e.g. gc-log=PATH
    server: str = "daphne"
    max_minutes: float = 20
    # Fewer runs at large N on one process: it is overloaded there, and each run takes minutes.
    big_n: int = 10**9
    big_n_reps: int = 1
    floor: str = "raw"  # the direct floor's reader: raw SSE (aiohttp + orjson) or the openai SDK
    client_procs: int = 2  # processes the load client and the floor's readers run in (1: this one)
    loop_lag: bool = True  # daphne measures its event loop's lag (a 5 ms timer, 200 firings a second)
    provider: str = "openai"  # whose wire format and adapter the site's replies use (the floor reads OpenAI's)

    @property
    def users(self) -> int:
        return max([*self.ns, self.idle, self.multi_n if self.multi else 0, self.ab_n if self.ab_variants else 0])

    def timeout(self, tokens: int | None = None, n: int = 1) -> float:
        """The longest a reply may take: four times its own length, plus slack that grows with N."""
        return self.ramp + (tokens or self.tokens) * self.token_delay * 4 + 30 + 0.2 * n


PLANS: dict[str, dict[str, Any]] = {
    "quick": {
        "configs": ["sqlite"], "ns": [1, 50], "reps": 1, "tokens": 40, "token_delay": 0.05, "ramp": 1.0,
        "idle": 200, "thread_lengths": [10, 1000], "thread_reps": 2, "length_check_n": 20, "multi": 0,
        "multi_n": 0, "max_minutes": 3,
    },
    "full": {
        "configs": ["sqlite", "postgres"], "ns": [1, 50, 200, 500], "reps": 3, "tokens": 100,
        "token_delay": 0.05, "ramp": 1.0, "idle": 1000, "thread_lengths": [10, 200, 1000], "thread_reps": 5,
        "length_check_n": 50, "multi": 2, "multi_n": 500, "max_minutes": 25, "big_n": 500, "big_n_reps": 1,
    },
    "ab": {
        "configs": ["sqlite"], "ns": [], "reps": 3, "tokens": 100, "token_delay": 0.05, "ramp": 1.0, "idle": 0,
        "thread_lengths": [], "thread_reps": 0, "length_check_n": 0, "multi": 0, "multi_n": 0, "ab_n": 200,
        "ab_variants": ["", "sdk-parse", "cleanup-hop", "stock-layer", "stock-layer,cleanup-hop,sdk-parse"],
        "max_minutes": 20,
    },
}  # fmt: skip


class Sampler:
    """Peak RSS of some processes, sampled five times a second while a phase runs."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0)
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss_bytes(pid))
            await asyncio.sleep(0.2)

    def __enter__(self) -> Sampler:
        for pid in self.pids:
            self.peak[pid] = rss_bytes(pid)
        self.task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()


class Bench:
    def __init__(self, plan: Plan, tmp: Path, log: Any) -> None:
        self.plan = plan
        self.tmp = tmp
        self.log = log
        self.started = time.monotonic()
        self.providers: list[Proc] = []
        self.provider_port = 0
        self.infra: list[int] = []
        self.results: dict[str, Any] = {"plan": plan.__dict__, "configs": {}}
        self.plan_out = Path(os.environ.get("BENCH_PY_SPY_OUT", tmp))
        self.floor: C.Floor | None = None  # the floor's reader in this process (warm-ups, --client-procs 1)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=self.log, flush=True)

    def out_of_time(self) -> bool:
        return time.monotonic() - self.started > self.plan.max_minutes * 60

    # -- CPU bookkeeping ----------------------------------------------------------------------------
    def cpu(self, site: Site | None) -> dict[str, float]:
        snap = {
            "machine": machine_busy_seconds(),
            "client": time.process_time(),
            "provider": sum(cpu_seconds(p.pid) for p in self.providers if p.alive()),
        }
        if site is not None:
            snap["server"] = sum(cpu_seconds(d.app_pid or d.pid) for d in site.daphnes)
            # PostgreSQL backends come and go; those alive at both ends of a phase are counted.
            snap["infra"] = infra_cpu_seconds(self.infra) if site.kind == "postgres" else 0.0
            snap["worker"] = cpu_seconds(site.worker.pid) if site.worker and site.worker.alive() else 0.0
        return snap

    @staticmethod
    def spent(
        before: dict[str, float], after: dict[str, float], wall: float, tokens: int, children_cpu: float = 0.0
    ) -> dict[str, Any]:
        d = {k: after[k] - before[k] for k in before}
        d["client"] += children_cpu  # the client processes' own accounts of the phase
        ours = sum(v for k, v in d.items() if k != "machine")
        out = {
            "wall_s": wall,
            # Cores busy with anything else on the machine (other people's tests, say): noise.
            "other_cores": max(0.0, d["machine"] - ours) / wall if wall else None,
            "client_cpu_s": d["client"],
            "client_cores": d["client"] / wall if wall else None,
            "provider_cpu_s": d["provider"],
        }
        if "server" in d:
            out |= {
                "server_cpu_s": d["server"],
                "server_ms_per_token": d["server"] * 1000 / tokens if tokens else None,
                "server_s_per_1k_tokens": d["server"] * 1000 / tokens if tokens else None,
                "server_cores": d["server"] / wall if wall else None,
                "worker_cpu_s": d["worker"],
                "infra_cores": d["infra"] / wall if wall else None,
            }
        return out

    # -- phases -----------------------------------------------------------------------------------
    async def direct(self, n: int) -> dict[str, Any]:
        """The floor: N streams read straight from the provider, in this process or split across the
        client processes."""
        assert self.floor is not None
        timeout, ramp = self.plan.timeout(n=n), self.ramp(n)
        phase = None
        if self.plan.client_procs > 1:
            spec = {"kind": self.plan.floor, "provider_port": self.provider_port, "ramp": ramp, "timeout": timeout}
            phase = Phase(spec, n, self.plan.client_procs, self.tmp)
            await phase.start()
        children_cpu = 0.0
        try:
            self.infra = infra_pids()
            before, t0 = self.cpu(None), time.monotonic()
            if phase is not None:
                outcome = await phase.run(timeout)
                results, children_cpu = outcome.results, outcome.cpu_s
            else:
                results = await C.direct_phase(self.floor, n, ramp=ramp, timeout=timeout)
            wall = time.monotonic() - t0
            after = self.cpu(None)
        finally:
            if phase is not None:
                await phase.close()
        summary = summarize_streams(results, self.plan.tokens)
        return summary | self.spent(before, after, wall, summary["tokens_received"], children_cpu)

    def ramp(self, n: int) -> float:
        return self.plan.ramp if n > 1 else 0.0

    async def site_phase(
        self, http: Any, site: Site, users: list[dict[str, Any]], tokens: int | None = None
    ) -> dict[str, Any]:
        tokens = tokens or self.plan.tokens
        n, ramp, timeout = len(users), self.ramp(len(users)), self.plan.timeout(tokens, len(users))
        phase, sockets = None, []
        if self.plan.client_procs > 1:
            # Each client process opens its share of the sockets (and reads their `state`) itself.
            phase = Phase({"kind": "site", "ports": site.ports, "ramp": ramp, "timeout": timeout}, n,
                          self.plan.client_procs, self.tmp)  # fmt: skip
            await phase.start(users)
        else:
            sockets = await C.connect_many(http, site.ports, users)
        spies = self.spy(site)
        children_cpu = 0.0
        try:
            await asyncio.sleep(0.3)
            with Sampler([d.app_pid or d.pid for d in site.daphnes]) as sampler:
                self.infra = infra_pids()
                before, t0, since = self.cpu(site), time.monotonic(), time.time()
                if phase is not None:
                    outcome = await phase.run(timeout)
                    results, children_cpu = outcome.results, outcome.cpu_s
                else:
                    results = await C.site_phase(sockets, ramp=ramp, timeout=timeout)
                wall, until = time.monotonic() - t0, time.time()
                after = self.cpu(site)
        finally:
            for spy in spies:
                spy.stop()
            if phase is not None:
                await phase.close()
            await C.close_many(sockets)
        summary = summarize_streams(results, tokens)
        summary |= self.spent(before, after, wall, summary["tokens_received"], children_cpu)
        summary["rss_peak_mb"] = sum(sampler.peak.values()) / MB
        summary["rss_peak_max_process_mb"] = max(sampler.peak.values()) / MB
        summary |= self.writes(site, results)
        logs = "".join(d.log.read_text(errors="replace") for d in site.daphnes)
        summary |= stage_summary(logs, {r.reply_id for r in results if r.reply_id is not None})
        summary |= loop_lag_summary(logs, since, until)
        site.check_alive()
        return summary

    def spy(self, site: Site) -> list[Proc]:
        """With BENCH_PY_SPY=/path/to/py-spy: sample each daphne's stacks during the phase (collapsed format,
        or BENCH_PY_SPY_FORMAT: `chrometrace` keeps each sample's time, to line up what each thread did
        while the loop lagged), into BENCH_PY_SPY_OUT (default: the run's scratch directory), with
        BENCH_PY_SPY_ARGS added."""
        tool = os.environ.get("BENCH_PY_SPY")
        if not tool:
            return []
        self.spied = getattr(self, "spied", 0) + 1
        spies = []
        for d in site.daphnes:
            out = self.plan_out / f"py-spy-{d.name}-{self.spied}.txt"
            pid = str(d.app_pid or d.pid)
            fmt = os.environ.get("BENCH_PY_SPY_FORMAT", "raw")
            args = [tool, "record", "--pid", pid, "--rate", "250", "--format", fmt, "--nonblocking"]
            args += os.environ.get("BENCH_PY_SPY_ARGS", "").split()  # e.g. "--gil --threads"
            spies.append(Proc("py-spy", [*args, "-o", str(out)], dict(os.environ), self.tmp / "py-spy.log").start())
        return spies

    def writes(self, site: Site, results: list[C.StreamResult]) -> dict[str, Any]:
        """UPDATEs of each reply's row (flushes + the final write), counted by a trigger."""
        ids = {r.reply_id for r in results if r.reply_id is not None}
        if not ids:
            return {"writes_per_reply": None, "writes_per_reply_max": None}
        rows = site.sql(
            "SELECT message_id, COUNT(*) FROM bench_writes WHERE message_id >= %s GROUP BY message_id", (min(ids),)
        )
        counts = {int(m): int(c) for m, c in rows if int(m) in ids}  # type: ignore[call-overload]
        per = [counts.get(i, 0) for i in ids]
        return {"writes_per_reply": median(per), "writes_per_reply_max": max(per)}

    async def idle_sockets(self, http: Any, site: Site, users: list[dict[str, Any]]) -> dict[str, Any]:
        pid = site.daphnes[0].app_pid or site.daphnes[0].pid
        await asyncio.sleep(1)
        rss0 = rss_bytes(pid)
        t0 = time.monotonic()
        sockets = await C.connect_many(http, site.ports[:1], users)
        connect_s = time.monotonic() - t0
        try:
            await asyncio.sleep(2)
            rss1 = rss_bytes(pid)
            cpu0 = cpu_seconds(pid)
            await asyncio.sleep(3)
            idle_cpu = (cpu_seconds(pid) - cpu0) / 3
        finally:
            await C.close_many(sockets)
        await asyncio.sleep(1)
        return {
            "sockets": len(users),
            "connect_s": connect_s,
            "rss_before_mb": rss0 / MB,
            "rss_open_mb": rss1 / MB,
            "rss_after_close_mb": rss_bytes(pid) / MB,
            "kb_per_socket": (rss1 - rss0) / len(users) / 1024,
            "idle_cpu_cores": idle_cpu,
        }

    async def thread_lengths(self, http: Any, site: Site, threads: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Open each thread (page, socket) and send one message, stopped after its first token."""
        port = site.ports[0]
        per: dict[str, dict[str, list[float]]] = {
            n: {"page_ms": [], "page_kb": [], "open_ms": [], "ttft_ms": []} for n in threads
        }
        for _ in range(self.plan.thread_reps):
            for n, user in threads.items():
                page_ms, size = await C.get_page(http, port, user)
                ws, open_ms, state = await C.connect(http, port, user)
                try:
                    r = await C.site_stream(ws, self.plan.timeout(), stop_after_first=True)
                finally:
                    await ws.close()
                per[n]["page_ms"].append(page_ms)
                per[n]["page_kb"].append(size / 1024)
                per[n]["open_ms"].append(open_ms)
                if r.ttft_ms is not None:
                    per[n]["ttft_ms"].append(r.ttft_ms)
        return {n: {k: median(v) for k, v in m.items()} | {"runs": m} for n, m in per.items()}

    # -- one configuration ---------------------------------------------------------------------------
    async def config(self, kind: str) -> dict[str, Any]:
        plan = self.plan
        out: dict[str, Any] = {"phases": {}, "notes": []}
        site = Site(
            kind, self.tmp, self.provider_port, variants=plan.variants, server=plan.server, loop_lag=plan.loop_lag,
            extra_env=provider_env(plan.provider, self.provider_port),
        )  # fmt: skip
        self.say(f"{kind}: creating and migrating the database")
        site.create_database()
        try:
            seed_path = self.tmp / f"seed-{kind}.json"
            subprocess.run(
                [PYTHON, "-m", "bench.seed", str(seed_path), "--users", str(plan.users + 1), "--threads",
                 ",".join(map(str, plan.thread_lengths))],
                cwd=ROOT, env=site.env(), check=True, timeout=300,
            )  # fmt: skip
            seed = json.loads(seed_path.read_text())
            users, warm_user = seed["users"][:-1], seed["users"][-1]
            if plan.ab_variants:
                out["ab"] = await self.ab(site, users[: plan.ab_n], warm_user)
                return out
            site.start(1)
            async with C.new_session() as http:
                self.floor = C.Floor(plan.floor, self.provider_port)
                await self.warm_up(http, site, warm_user)
                if plan.idle:
                    self.say(f"{kind}: {plan.idle} idle sockets")
                    out["idle"] = await self.idle_sockets(http, site, users[: plan.idle])
                for n in plan.ns:
                    if self.out_of_time():
                        out["notes"].append(f"stopped before N={n}: over the time budget")
                        break
                    direct_runs, site_runs, ratios = [], [], []
                    for rep in range(plan.reps if n < plan.big_n else plan.big_n_reps):
                        d = await self.direct(n)
                        s = await self.site_phase(http, site, users[:n])
                        direct_runs.append(d)
                        site_runs.append(s)
                        ratios.append(self.ratios(s, d))
                        self.say(
                            f"{kind} N={n} run {rep + 1}: site p50 {s['lat_p50']:.1f} p99 {s['lat_p99']:.1f} ms "
                            f"(direct {d['lat_p50']:.1f}/{d['lat_p99']:.1f}), ttft {s['ttft_p50']:.1f} "
                            f"(direct {d['ttft_p50']:.1f}; msg {s['message_p50']:.1f} start {s['start_p50']:.1f}), "
                            f"cpu {s['server_ms_per_token']:.3f} ms/token, "
                            f"lost {s['lost']} repeated {s['repeated']} failed {s['failed']}, "
                            f"client {d['client_cores']:.2f}/{s['client_cores']:.2f} cores, "
                            f"tokens/s {_n(s['emitted_tps'])} emitted {_n(s['delivered_tps'])} delivered, "
                            f"loop lag p99 {_n(s['loop_lag_p99'], 1)} max {_n(s['loop_lag_max'], 1)} ms, "
                            f"other load {s['other_cores']:.2f} cores, p99 by second {s['lat_p99_by_second']}"
                        )
                    out["phases"][str(n)] = {
                        "direct": combine(direct_runs),
                        "site": combine(site_runs),
                        "ratios": combine(ratios),
                        "runs": {"direct": direct_runs, "site": site_runs},
                    }
                out["server_vmhwm_mb"] = peak_rss_bytes(site.daphnes[0].app_pid or site.daphnes[0].pid) / MB
                if plan.thread_lengths and not self.out_of_time():
                    self.say(f"{kind}: thread lengths {plan.thread_lengths}")
                    out["threads"] = await self.thread_lengths(http, site, seed["threads"])
                if plan.length_check_n and not self.out_of_time():
                    out["length_check"] = await self.length_check(http, site, users[: plan.length_check_n])
                if kind == "postgres" and plan.multi and not self.out_of_time():
                    out["multi"] = await self.multi(http, site, users[: plan.multi_n])
                await self.floor.aclose()
        finally:
            site.stop()
            site.drop_database()
        return out

    @staticmethod
    def ratios(s: dict[str, Any], d: dict[str, Any]) -> dict[str, Any]:
        return {
            "lat_p50": ratio(s["lat_p50"], d["lat_p50"]),
            "lat_p99": ratio(s["lat_p99"], d["lat_p99"]),
            "ttft_p50": ratio(s["ttft_p50"], d["ttft_p50"]),
            "ttft_p50_added_ms": (s["ttft_p50"] - d["ttft_p50"]) if s["ttft_p50"] and d["ttft_p50"] else None,
            "ttft_p95_added_ms": ((s["ttft_p95"] - d["ttft_p95"]) if s.get("ttft_p95") and d.get("ttft_p95") else None),
            "lat_p50_added_ms": (s["lat_p50"] - d["lat_p50"]) if s["lat_p50"] and d["lat_p50"] else None,
            "lat_p99_added_ms": (s["lat_p99"] - d["lat_p99"]) if s["lat_p99"] and d["lat_p99"] else None,
        }

    async def warm_up(self, http: Any, site: Site, user: dict[str, Any]) -> None:
        """Imports, connection pools and the first queries, before anything is timed."""
        assert self.floor is not None
        await C.direct_phase(self.floor, 2, ramp=0, timeout=self.plan.timeout())
        for port in site.ports:
            ws, _, _ = await C.connect(http, port, user)
            try:
                await C.site_stream(ws, self.plan.timeout())
            finally:
                await ws.close()

    async def length_check(self, http: Any, site: Site, users: list[dict[str, Any]]) -> dict[str, Any]:
        """Replies of the same duration, 5x the tokens: the writes per reply must not change."""
        plan = self.plan
        self.say(f"{site.kind}: writes per reply, {plan.tokens} vs {plan.tokens * 5} tokens in the same time")
        short = await self.site_phase(http, site, users)
        provider, port = start_provider(
            self.tmp, tokens=plan.tokens * 5, token_delay=plan.token_delay / 5, name=f"provider-long-{site.kind}"
        )
        self.providers.append(provider)
        try:
            site.stop_daphnes()
            site.provider_port = port
            site.start(1, worker=False)
            ws, _, _ = await C.connect(http, site.ports[0], users[0])
            try:
                await C.site_stream(ws, plan.timeout(plan.tokens * 5))
            finally:
                await ws.close()
            long = await self.site_phase(http, site, users, tokens=plan.tokens * 5)
        finally:
            site.stop_daphnes()
            provider.stop()
            self.providers.remove(provider)
            site.provider_port = self.provider_port
            site.start(1, worker=False)
        keys = ("tokens_received", "reply_seconds", "writes_per_reply", "writes_per_reply_max", "lost", "repeated")
        return {
            "n": len(users),
            "short": {k: short[k] for k in keys} | {"tokens": plan.tokens},
            "long": {k: long[k] for k in keys} | {"tokens": plan.tokens * 5},
        }

    async def multi(self, http: Any, site: Site, users: list[dict[str, Any]]) -> dict[str, Any]:
        plan = self.plan
        self.say(f"{site.kind}: {plan.multi} daphne processes, N={len(users)}")
        site.stop_daphnes()
        site.start(plan.multi, worker=False)
        warm = users[: plan.multi]
        await self.warm_up_all(http, site, warm)
        direct_runs, site_runs, ratios = [], [], []
        for rep in range(max(2, plan.big_n_reps)):
            if self.out_of_time():
                break
            d = await self.direct(len(users))
            s = await self.site_phase(http, site, users)
            direct_runs.append(d)
            site_runs.append(s)
            ratios.append(self.ratios(s, d))
            self.say(
                f"multi N={len(users)} run {rep + 1}: site p50 {s['lat_p50']:.1f} p99 {s['lat_p99']:.1f} "
                f"(direct {d['lat_p50']:.1f}/{d['lat_p99']:.1f}) client {s['client_cores']:.2f} cores "
                f"lost {s['lost']} failed {s['failed']}"
            )
        return {
            "processes": plan.multi,
            "n": len(users),
            "direct": combine(direct_runs),
            "site": combine(site_runs),
            "ratios": combine(ratios),
            "vmhwm_mb": [peak_rss_bytes(d.app_pid or d.pid) / MB for d in site.daphnes],
        }

    async def warm_up_all(self, http: Any, site: Site, users: list[dict[str, Any]]) -> None:
        for port, user in zip(site.ports, users, strict=False):
            ws, _, _ = await C.connect(http, port, user)
            try:
                await C.site_stream(ws, self.plan.timeout())
            finally:
                await ws.close()

    # -- before/after of each optimization -------------------------------------------------------------
    async def ab(self, site: Site, users: list[dict[str, Any]], warm_user: dict[str, Any]) -> dict[str, Any]:
        """The same N-stream phase with each optimization switched off in turn (bench/variants.py)."""
        plan = self.plan
        out: dict[str, Any] = {}
        async with C.new_session() as http:
            self.floor = C.Floor(plan.floor, self.provider_port)
            for variant in plan.ab_variants:
                if self.out_of_time():
                    break
                site.variants = variant
                site.start(1)
                try:
                    await self.warm_up(http, site, warm_user)
                    runs, directs = [], []
                    for _ in range(plan.reps):
                        directs.append(await self.direct(len(users)))
                        runs.append(await self.site_phase(http, site, users))
                    label = variant or "all optimizations on"
                    # A variant run again (alternating phases, `;X;;X`) gets a row of its own for each run.
                    seen = sum(1 for key in out if key == label or key.startswith(f"{label} ("))
                    label = f"{label} ({seen + 1})" if seen else label
                    out[label] = {"site": combine(runs), "direct": combine(directs)}
                    s = out[label]["site"]
                    self.say(
                        f"A/B [{label}] N={len(users)}: p50 {s['lat_p50']:.1f} p99 {s['lat_p99']:.1f} ms, "
                        f"ttft {s['ttft_p50']:.1f} (msg {s['message_p50']:.1f}), "
                        f"cpu {s['server_ms_per_token']:.3f} ms/token, other load {s['other_cores']:.2f} cores"
                    )
                finally:
                    site.stop_daphnes()
            await self.floor.aclose()
        return out

    # -- the whole run ---------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        plan = self.plan
        provider, self.provider_port = start_provider(self.tmp, tokens=plan.tokens, token_delay=plan.token_delay)
        self.providers.append(provider)
        try:
            for kind in plan.configs:
                if kind == "postgres" and not postgres_available():
                    self.say("postgres: PostgreSQL or Redis not reachable on 127.0.0.1: skipped")
                    self.results["configs"][kind] = {"skipped": "PostgreSQL or Redis not reachable"}
                    continue
                if self.out_of_time():
                    self.results["configs"][kind] = {"skipped": "over the time budget"}
                    continue
                self.results["configs"][kind] = await self.config(kind)
        finally:
            for p in self.providers:
                p.stop()
        self.results["seconds"] = time.monotonic() - self.started
        return self.results


def _n(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
        mem_gb = int(mem.split()[1]) / 1024 / 1024
    except (OSError, StopIteration):
        mem_gb = 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="the < 2 minute run")
    mode.add_argument("--full", action="store_const", dest="mode", const="full", help="the whole table (default)")
    mode.add_argument("--ab", action="store_const", dest="mode", const="ab", help="each optimization on/off")
    parser.add_argument("--configs", help="comma-separated: sqlite,postgres")
    parser.add_argument("--ns", help="comma-separated concurrent conversations, e.g. 1,50,200,500")
    parser.add_argument("--reps", type=int, help="runs of each phase (medians are reported)")
    parser.add_argument("--tokens", type=int, help="tokens per reply")
    parser.add_argument("--token-delay", type=float, help="seconds between tokens (0.05 = 20 tokens/s)")
    parser.add_argument("--idle", type=int, help="idle sockets to open (0: skip)")
    parser.add_argument("--multi", type=int, help="daphne processes for the Redis multi-process run (0: skip)")
    parser.add_argument("--multi-n", type=int, help="conversations in the multi-process run")
    parser.add_argument("--variants", help="BENCH_VARIANTS for the site in a --quick/--full run (bench/variants.py)")
    parser.add_argument("--ab-n", type=int, help="conversations in each A/B run")
    parser.add_argument("--ab-variants", help="semicolon-separated BENCH_VARIANTS values ('' = all on)")
    parser.add_argument("--server", choices=SERVERS, help="the ASGI server to run the site on (default daphne)")
    parser.add_argument(
        "--floor", choices=C.FLOORS, help="the direct floor's reader: raw SSE (default) or the openai SDK's stream"
    )
    parser.add_argument(
        "--client-procs", type=int, help="processes the load client and the floor run in (default 2; 1: in this one)"
    )
    parser.add_argument(
        "--provider", choices=PROVIDERS, help="the site's replies through the openai (default) or anthropic adapter"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON and table go")
    parser.add_argument(
        "--no-loop-lag", dest="loop_lag", action="store_false", default=None,
        help="daphne without its loop-lag probe (its 200 timer firings a second are in the server's CPU)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    name = args.mode or "full"
    settings: dict[str, Any] = dict(PLANS[name])
    knobs = ("reps", "tokens", "token_delay", "idle", "multi", "multi_n", "ab_n", "floor", "client_procs", "loop_lag")
    knobs += ("variants", "provider")
    for key in knobs:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.configs:
        settings["configs"] = args.configs.split(",")
    if args.ns:
        settings["ns"] = [int(x) for x in args.ns.split(",")]
    if args.server:
        settings["server"] = args.server
    if args.ab_variants is not None:
        settings["ab_variants"] = args.ab_variants.split(";")
    plan = Plan(mode=name, **settings)

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp:
        bench = Bench(plan, Path(tmp), sys.stderr)
        bench.say(f"{name} run: {plan.configs}, N={plan.ns}, {plan.reps} runs, {plan.tokens} tokens/reply")
        try:
            results = asyncio.run(bench.run())
        except BaseException:
            for log in sorted(Path(tmp).glob("*.log")):
                tail = log.read_text(errors="replace")[-2000:]
                if tail.strip():
                    print(f"--- {log.name}\n{tail}", file=sys.stderr)
            raise
    results["machine"] = machine()
    results["command"] = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    json_path = args.out / f"{name}-{stamp}.json"
    json_path.write_text(json.dumps(results, indent=1, default=str))
    table = render(results)
    (args.out / f"{name}-{stamp}.md").write_text(table)
    print(table)
    bench.say(f"done in {results['seconds']:.0f}s: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
