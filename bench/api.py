"""The API beside the websocket: time to first token and server CPU per token for the same streams.

    .venv/bin/python -m bench.api                 # SQLite, N = 1, 20, 50, 3 runs each (~3 minutes)
    .venv/bin/python -m bench.api --ns 1,100 --reps 5 --tokens 200

One daphne (production settings) and the fake provider in stamp mode, as bench.run. For each N and
run: the direct floor (the openai SDK reading the provider), N websocket replies (bench.client), and N
streamed `/v1/chat/completions` read by the openai SDK with users' API keys. Per phase: median time to
first token and token latency, and daphne's CPU seconds divided by the tokens delivered.
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

from .client import (
    Floor,
    StreamResult,
    _Tokens,
    close_many,
    connect_many,
    direct_phase,
    new_session,
    site_phase,
)
from .procs import PYTHON, ROOT, Site, cpu_seconds, machine_busy_seconds, start_provider
from .stats import combine, summarize_streams

KEYS = """
import json, sys
import django
django.setup()
from django.contrib.auth import get_user_model
from api.keys import api_key_create
from conversations.models import Persona
out = {"model": Persona.objects.get(is_default=True).slug, "keys": []}
for user in get_user_model().objects.filter(username__startswith="bench").order_by("id"):
    out["keys"].append(api_key_create(user=user, name="bench")[1])
print(json.dumps(out))
"""


async def api_stream(client: Any, model: str, timeout: float) -> StreamResult:
    """One streamed completion from the site's API, read by the openai SDK."""
    result = StreamResult(status="complete")
    tokens = _Tokens(result)
    t0 = time.time() * 1000
    try:
        async with asyncio.timeout(timeout):
            stream = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "Tell me something."}],
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                for choice in chunk.choices:
                    if content := choice.delta.content:
                        now_ms = time.time() * 1000
                        if result.ttft_ms is None:
                            result.ttft_ms = now_ms - t0
                        tokens.feed(content, now_ms)
    except Exception as exc:
        result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
    result.seconds = (time.time() * 1000 - t0) / 1000
    return result


async def api_phase(clients: list[Any], model: str, *, ramp: float, timeout: float) -> list[StreamResult]:
    n = len(clients)

    async def one(i: int, client: Any) -> StreamResult:
        await asyncio.sleep(ramp * i / n)
        return await api_stream(client, model, timeout)

    return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(clients))))


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import openai

    provider, port = start_provider(tmp, tokens=args.tokens, token_delay=args.token_delay)
    site = Site("sqlite", tmp, port)
    results: dict[str, Any] = {"config": vars(args), "ns": {}}
    try:
        site.create_database()
        seed_path = tmp / "seed.json"
        users_needed = max(args.ns) + 1
        subprocess.run(
            [PYTHON, "-m", "bench.seed", str(seed_path), "--users", str(users_needed), "--threads", ""],
            cwd=ROOT, env=site.env(), check=True, timeout=300,
        )  # fmt: skip
        users = json.loads(seed_path.read_text())["users"]
        made = subprocess.run(
            [PYTHON, "-c", KEYS], cwd=ROOT, env=site.env(), check=True, timeout=120, capture_output=True, text=True
        )
        info = json.loads(made.stdout.strip().splitlines()[-1])
        model, keys = info["model"], info["keys"]
        site.start(worker=False)
        daphne = site.daphnes[0].app_pid or site.daphnes[0].pid
        base = f"http://127.0.0.1:{site.ports[0]}/v1"
        direct = Floor("sdk", port)  # the SDK, as the API's readers: like against like
        api_clients = [openai.AsyncOpenAI(api_key=k, base_url=base, max_retries=0) for k in keys]
        async with new_session() as http:
            # Warm up both paths (first requests import and connect).
            sockets = await connect_many(http, site.ports, users[-1:])
            await site_phase(sockets, ramp=0, timeout=args.timeout)
            await close_many(sockets)
            await api_phase(api_clients[-1:], model, ramp=0, timeout=args.timeout)
            for n in args.ns:
                runs: dict[str, list[dict[str, Any]]] = {"direct": [], "websocket": [], "api": []}
                for _ in range(args.reps):
                    summary = summarize_streams(
                        await direct_phase(direct, n, ramp=args.ramp, timeout=args.timeout), args.tokens
                    )
                    runs["direct"].append(summary)
                    sockets = await connect_many(http, site.ports, users[:n])
                    for name in ("websocket", "api"):
                        busy0, cpu0 = machine_busy_seconds(), cpu_seconds(daphne)
                        t0 = time.monotonic()
                        if name == "websocket":
                            streams = await site_phase(sockets, ramp=args.ramp, timeout=args.timeout)
                        else:
                            streams = await api_phase(api_clients[:n], model, ramp=args.ramp, timeout=args.timeout)
                        wall = time.monotonic() - t0
                        summary = summarize_streams(streams, args.tokens)
                        cpu = cpu_seconds(daphne) - cpu0
                        summary["server_cpu_s"] = cpu
                        summary["server_ms_per_token"] = 1000 * cpu / max(1, summary["tokens_received"])
                        summary["machine_busy_cores"] = (machine_busy_seconds() - busy0) / wall
                        runs[name].append(summary)
                        await asyncio.sleep(0.5)  # let the site write its final rows before the next phase
                    await close_many(sockets)
                results["ns"][str(n)] = {k: combine(v) for k, v in runs.items()}
                print(table_row(n, results["ns"][str(n)]), flush=True)
    finally:
        site.stop()
        provider.stop()
    return results


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


HEADER = (
    "| N | TTFT p50 direct | websocket | API | token latency p50 direct | websocket | API "
    "| CPU ms/token websocket | API | lost / failed | machine busy cores |\n"
    "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--|--:|"
)


def table_row(n: int, phases: dict[str, dict[str, Any]]) -> str:
    d, w, a = phases["direct"], phases["websocket"], phases["api"]
    lost = f"{w['lost'] + a['lost']} / {w['failed'] + a['failed']}"
    return (
        f"| {n} | {_ms(d['ttft_p50'])} | {_ms(w['ttft_p50'])} | {_ms(a['ttft_p50'])} | {_ms(d['lat_p50'])} "
        f"| {_ms(w['lat_p50'])} "
        f"| {_ms(a['lat_p50'])} | {w['server_ms_per_token']:.3f} | {a['server_ms_per_token']:.3f} | {lost} "
        f"| {a['machine_busy_cores']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ns", default="1,20,50", help="concurrent streams, comma-separated")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--ramp", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    args.ns = [int(x) for x in args.ns.split(",") if x]
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        results = asyncio.run(measure(args, Path(tmp)))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"api-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nmedians of {args.reps} runs; ms; results in {path}")


if __name__ == "__main__":
    main()
