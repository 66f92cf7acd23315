"""A provider's first reply in a fresh server, while another user's reply streams:
`python -m bench.first_reply [--configs sqlite] [--reps 3] [--variants ";sdk-import-on-loop"]`.

The first reply a server process sends to a provider imports that provider's adapter and SDK. For each
variant and repetition this starts the fake provider (stamped tokens: 300 at 10 ms, 3 s a reply), a fresh
site, and two users, one on a persona of the OpenAI-compatible model and one on a persona of the
Anthropic model. User A's first reply loads A's SDK; then A's second reply streams, and half a second
into it user B sends the first reply to the other provider. It reports B's first-token time, the
per-token added latency of A's stream while B's SDK loaded (max and p99 over the tokens of the
second in which B sent), and the longest the event loop was held (the loop-lag probe's max over the
same window). Both orders are run: OpenAI first (B loads Anthropic's SDK) and Anthropic first.
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
from .procs import PYTHON, ROOT, Site, start_provider
from .stats import loop_lag_summary, percentile

TOKENS, TOKEN_DELAY = 300, 0.01
PERSONAS = {"openai": "openai:bench", "anthropic": "anthropic:claude-bench"}

SETUP = """
import json, sys
import django
django.setup()
from conversations.models import Conversation, Persona
users = json.loads(open(sys.argv[1]).read())["users"]
for info, (slug, model) in zip(users, json.loads(sys.argv[2])):
    persona, _ = Persona.objects.get_or_create(slug=slug, defaults={"name": slug, "model": model})
    Conversation.objects.filter(pk=info["conversation"]).update(persona=persona, model="")
"""


async def scenario(port: int, a: dict[str, Any], b: dict[str, Any], lead: float) -> dict[str, Any]:
    async with C.new_session() as http:
        ws_a, _, _ = await C.connect(http, port, a)
        ws_b, _, _ = await C.connect(http, port, b)
        try:
            warm = await C.site_stream(ws_a, 60)  # A's SDK loads
            stream_a = asyncio.ensure_future(C.site_stream(ws_a, 60))
            await asyncio.sleep(lead)
            sent = time.time()
            first_b = await C.site_stream(ws_b, 60)
            during = await stream_a
        finally:
            await ws_a.close()
            await ws_b.close()
    # A's tokens emitted in the second after B's send: what B's SDK import could have held back.
    pairs = zip(during.latencies, during.stamps, strict=True)
    window = [lat for lat, stamp in pairs if sent * 1000 <= stamp <= sent * 1000 + 1000]
    return {
        "warm_status": warm.status,
        "warm_ttft_ms": warm.ttft_ms,
        "b_status": first_b.status,
        "b_ttft_ms": first_b.ttft_ms,
        "a_status": during.status,
        "a_lost": during.lost(TOKENS),
        "a_window_tokens": len(window),
        "a_window_max_ms": max(window) if window else None,
        "a_window_p99_ms": percentile(window, 99),
        "sent": sent,
    }


def run_once(kind: str, tmp: Path, provider_port: int, variants: str, first: str) -> dict[str, Any]:
    site = Site(
        kind,
        tmp,
        provider_port,
        variants=variants,
        loop_lag=True,
        extra_env={"ANTHROPIC_API_KEY": "x", "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{provider_port}"},
    )
    site.create_database()
    try:
        seed = tmp / "seed.json"
        env = site.env()
        subprocess.run([PYTHON, "-m", "bench.seed", str(seed), "--users", "2", "--threads", ""],
                       cwd=ROOT, env=env, check=True, timeout=300)  # fmt: skip
        second = "anthropic" if first == "openai" else "openai"
        order = [(f"bench-{first}", PERSONAS[first]), (f"bench-{second}", PERSONAS[second])]
        subprocess.run([PYTHON, "-c", SETUP, str(seed), json.dumps(order)], cwd=ROOT, env=env, check=True, timeout=120)
        a, b = json.loads(seed.read_text())["users"]
        site.start(1)
        time.sleep(2)
        out = asyncio.run(scenario(site.ports[0], a, b, lead=0.5))
        time.sleep(1.5)  # the loop-lag line of the window's last second
        log = site.daphnes[0].log.read_text()
        out |= loop_lag_summary(log, out["sent"], out["sent"] + 1.0)
        return out
    finally:
        site.stop()
        site.drop_database()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="sqlite")
    parser.add_argument("--variants", default=";sdk-import-on-loop", help="';'-separated BENCH_VARIANTS sets")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--first", default="openai,anthropic", help="whose SDK user A loads first")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-first-") as d:
        tmp = Path(d)
        provider, port = start_provider(tmp, tokens=TOKENS, token_delay=TOKEN_DELAY)
        try:
            for kind in [c for c in args.configs.split(",") if c]:
                for first in args.first.split(","):
                    for rep in range(args.reps):
                        for variants in args.variants.split(";"):
                            run_dir = tmp / f"{kind}-{first}-{rep}-{variants or 'on'}"
                            run_dir.mkdir()
                            r = run_once(kind, run_dir, port, variants, first)
                            print(
                                f"{kind} A={first} [{variants or 'as built'}] run {rep + 1}: "
                                f"B's first token {r['b_ttft_ms']:.0f} ms ({r['b_status']}); "
                                f"A's tokens in that second: {r['a_window_tokens']}, added latency max "
                                f"{r['a_window_max_ms']:.1f} ms, p99 {r['a_window_p99_ms']:.1f}; "
                                f"loop held at most {r['loop_lag_max']} ms; A lost {r['a_lost']} "
                                f"({r['a_status']}); A's own first token {r['warm_ttft_ms']:.0f} ms",
                                flush=True,
                            )
        finally:
            provider.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
