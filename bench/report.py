"""A benchmark run's results as markdown tables, with each target checked."""

from __future__ import annotations

import math
from typing import Any


def f(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def rates(x: dict[str, Any]) -> str:
    """Tokens per second the provider emitted / the client received, over the phase."""
    return f"{f(x.get('emitted_tps'), 0)} / {f(x.get('delivered_tps'), 0)}"


def loop_lag(x: dict[str, Any]) -> str:
    """How late the server's event loop fired a 5 ms timer: p50 / p99 / max, ms."""
    return f"{f(x.get('loop_lag_p50'))} / {f(x.get('loop_lag_p99'))} / {f(x.get('loop_lag_max'))}"


def streams_table(config: dict[str, Any]) -> str:
    rows = []
    for n, phase in config.get("phases", {}).items():
        d, s, r = phase["direct"], phase["site"], phase["ratios"]
        rows.append(
            [
                n,
                f"{f(d['lat_p50'])} / {f(d['lat_p99'])}",
                f"{f(s['lat_p50'])} / {f(s['lat_p99'])}",
                f"{f(r['lat_p50'], 2)} / {f(r['lat_p99'], 2)}",
                rates(d),
                rates(s),
                f"{f(d['ttft_p50'])} / {f(s['ttft_p50'])}",
                f(r["ttft_p50_added_ms"], 1),
                f(s["server_ms_per_token"], 3),
                f(s["server_cores"], 2),
                loop_lag(s),
                f"{f(d['client_cores'], 2)} / {f(s['client_cores'], 2)}",
                f"{f(d['provider_cpu_s'] / max(d['wall_s'], 1e-9), 2)}",
                f(s.get("infra_cores"), 2),
                f(s.get("other_cores"), 2),
                f(s["rss_peak_mb"], 0),
                f"{f(s['writes_per_reply'], 0)} / {f(s['writes_per_reply_max'])}",
                f"{s['lost']} / {s['repeated']}",
                f"{s.get('unfinished', 0)}",
                f"{s['failed']}" + (f" ({', '.join(s['failures'])})" if s.get("failures") else ""),
            ]
        )
    return table(
        [
            "N",
            "direct ms p50 / p99",
            "site ms p50 / p99",
            "site/direct p50 / p99",
            "direct tokens/s emitted / delivered",
            "site tokens/s emitted / delivered",
            "TTFT ms direct / site",
            "TTFT added ms",
            "server CPU ms/token",
            "server cores",
            "loop lag ms p50 / p99 / max",
            "client cores direct / site",
            "provider cores",
            "PostgreSQL + Redis cores",
            "other load cores",
            "peak RSS MB",
            "writes/reply med / max",
            "lost / repeated",
            "unfinished",
            "failed",
        ],
        rows,
    )


STAGE_LABELS = (
    ("db_start", "database thread starts"),
    ("stored", "stored"),
    ("request", "request built"),
    ("task", "reply task runs"),
    ("provider", "provider called"),
    ("first_token", "first token parsed"),
    ("published", "first delta published"),
)


def stages_table(config: dict[str, Any]) -> str:
    """Where the time before the first token goes, inside the server: ms since the `send` frame
    arrived, p50 / p95 over the phase's replies (medians over runs)."""
    rows = []
    for n, phase in config.get("phases", {}).items():
        s = phase["site"]
        if not s.get("stage_replies"):
            continue
        rows.append(
            [n, f"{f(s['ttft_p50'])} / {f(s.get('ttft_p95'))} / {f(s['ttft_p99'])}"]
            + [f"{f(s.get(f'stage_{k}_p50'))} / {f(s.get(f'stage_{k}_p95'))}" for k, _ in STAGE_LABELS]
        )
    if not rows:
        return ""
    return table(
        ["N", "TTFT at the client p50 / p95 / p99"] + [f"{label} p50 / p95" for _, label in STAGE_LABELS], rows
    )


def floor_line(plan: dict[str, Any]) -> str:
    """Which floor, how many client processes (runs before issue 15: the SDK's, in one), and the probe."""
    floor = {"raw": "a raw SSE reader (aiohttp + orjson)", "sdk": "the openai SDK's parsed stream"}
    procs = plan.get("client_procs", 1)
    where = "the bench process" if procs == 1 else f"{procs} client processes"
    line = f"Direct floor: {floor[plan.get('floor', 'sdk')]}; users and floor readers in {where}."
    if plan.get("provider", "openai") != "openai":
        line += f" The site's replies go through its {plan['provider']} adapter (the floor reads OpenAI's format)."
    if plan.get("loop_lag"):
        line += " The server's loop-lag probe is on (its timer's 200 firings a second are in its CPU)."
    return line


def render(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    plan = results["plan"]
    out = [
        f"Run `{results.get('command', 'python -m bench.run')}` on {m.get('date', '?')}: {m.get('cores')} cores "
        f"({m.get('cpu', '?')}), {m.get('memory_gb')} GB, Python {m.get('python')}, commit {m.get('commit')}. "
        f"Replies of {plan['tokens']} tokens, one every {plan['token_delay'] * 1000:.0f} ms "
        f"({1 / plan['token_delay']:.0f} tokens/s); sends spread over {plan['ramp']:g} s; "
        f"medians of {plan['reps']} runs; whole run {results.get('seconds', 0):.0f} s. "
        f"{floor_line(plan)}",
        "",
    ]
    for kind, config in results["configs"].items():
        title = "SQLite + in-memory layer" if kind == "sqlite" else "PostgreSQL + Redis (pub/sub layer)"
        out.append(f"#### {title}, one {plan.get('server', 'daphne')} process")
        out.append("")
        if "skipped" in config:
            out += [f"Skipped: {config['skipped']}.", ""]
            continue
        if "ab" in config:
            out += [ab_table(config["ab"]), ""]
            continue
        out += [streams_table(config), ""]
        stages = stages_table(config)
        if stages:
            head = "Before the first token, inside the server (ms since the `send` frame arrived, p50 / p95):"
            out += [head, "", stages, ""]
        server = plan.get("server", "daphne")
        if config.get("server_vmhwm_mb"):
            out += [f"{server}'s peak RSS over all the phases above (VmHWM): {config['server_vmhwm_mb']:.0f} MB.", ""]
        idle = config.get("idle")
        if idle:
            out += [
                f"Idle sockets: {idle['sockets']} open (in {idle['connect_s']:.1f} s): {server} RSS "
                f"{idle['rss_before_mb']:.0f} → {idle['rss_open_mb']:.0f} MB, "
                f"**{idle['kb_per_socket']:.1f} KB per socket**; CPU while they idle "
                f"{idle['idle_cpu_cores'] * 100:.1f}% of a core; {idle['rss_after_close_mb']:.0f} MB after closing.",
                "",
            ]
        threads = config.get("threads")
        if threads:
            rows = [
                [n, f(t["page_ms"]), f(t["page_kb"], 0), f(t["open_ms"]), f(t["ttft_ms"])] for n, t in threads.items()
            ]
            keys = sorted(threads, key=int)
            if len(keys) >= 2:
                a, b = threads[keys[0]], threads[keys[-1]]
                rows.append(
                    [
                        f"ratio {keys[-1]}/{keys[0]}",
                        f(_ratio(b["page_ms"], a["page_ms"]), 2),
                        f(_ratio(b["page_kb"], a["page_kb"]), 1),
                        f(_ratio(b["open_ms"], a["open_ms"]), 2),
                        f(_ratio(b["ttft_ms"], a["ttft_ms"]), 2),
                    ]
                )
            out += [
                "Thread length (medians; a send stopped after its first token):",
                "",
                table(["prior messages", "page GET ms", "page KB", "socket open → state ms", "TTFT ms"], rows),
                "",
            ]
        lc = config.get("length_check")
        if lc:
            rows = [
                [
                    name,
                    str(x["tokens"]),
                    f(x["reply_seconds"], 2),
                    f"{f(x['writes_per_reply'], 0)} / {f(x['writes_per_reply_max'])}",
                    f"{x['lost']} / {x['repeated']}",
                ]
                for name, x in (("short", lc["short"]), ("long", lc["long"]))
            ]
            out += [
                f"Writes per reply against reply length (N={lc['n']}, same duration):",
                "",
                table(["reply", "tokens", "seconds", "UPDATEs of the row med / max", "lost / repeated"], rows),
                "",
            ]
        multi = config.get("multi")
        if multi:
            d, s, r = multi["direct"], multi["site"], multi["ratios"]
            out += [
                f"#### {multi['processes']} daphne processes behind Redis, N={multi['n']} in total",
                "",
                table(
                    [
                        "direct ms p50 / p99",
                        "site ms p50 / p99",
                        "site/direct p50 / p99",
                        "site tokens/s emitted / delivered",
                        "TTFT ms direct / site",
                        "server CPU ms/token",
                        "server cores",
                        "loop lag ms p50 / p99 / max",
                        "client cores (direct / site)",
                        "peak RSS MB (sum)",
                        "lost / repeated",
                        "failed",
                    ],
                    [
                        [
                            f"{f(d['lat_p50'])} / {f(d['lat_p99'])}",
                            f"{f(s['lat_p50'])} / {f(s['lat_p99'])}",
                            f"{f(r['lat_p50'], 2)} / {f(r['lat_p99'], 2)}",
                            rates(s),
                            f"{f(d['ttft_p50'])} / {f(s['ttft_p50'])}",
                            f(s["server_ms_per_token"], 3),
                            f(s["server_cores"], 2),
                            loop_lag(s),
                            f"{f(d['client_cores'], 2)} / {f(s['client_cores'], 2)}",
                            f(s["rss_peak_mb"], 0),
                            f"{s['lost']} / {s['repeated']}",
                            str(s["failed"]),
                        ]
                    ],
                ),
                "",
            ]
        for note in config.get("notes", []):
            out += [f"Note: {note}.", ""]
    out += [targets(results), ""]
    return "\n".join(out)


def ab_table(ab: dict[str, Any]) -> str:
    rows = []
    for label, x in ab.items():
        s, d = x["site"], x["direct"]
        rows.append(
            [
                label,
                f"{f(s['lat_p50'])} / {f(s['lat_p99'])}",
                f"{f(d['lat_p50'])} / {f(d['lat_p99'])}",
                f"{f(d['ttft_p50'])} / {f(s['ttft_p50'])}",
                f(s["server_ms_per_token"], 3),
                f(s["server_cores"], 2),
                loop_lag(s),
                f(s.get("other_cores"), 2),
                f(s["rss_peak_mb"], 0),
                f"{s['lost']} / {s['repeated']}",
                str(s["failed"]),
            ]
        )
    return table(
        [
            "switched off",
            "site ms p50 / p99",
            "direct ms p50 / p99",
            "TTFT ms direct / site",
            "server CPU ms/token",
            "server cores",
            "loop lag ms p50 / p99 / max",
            "other load cores",
            "peak RSS MB",
            "lost / repeated",
            "failed",
        ],
        rows,
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(results: dict[str, Any]) -> str:
    """Each target of issues 6 and 15 against this run's numbers: met, missed, or not measured."""
    lines = ["Targets (one daphne process unless said):", ""]

    def check(name: str, ok: bool | None, detail: str) -> None:
        mark = "not measured" if ok is None else ("met" if ok else "**missed**")
        lines.append(f"- {name}: {mark} ({detail})")

    for kind, config in results["configs"].items():
        if "phases" not in config:
            continue
        phases = config["phases"]
        lost = {
            n: (p["site"]["lost"], p["site"]["repeated"], p["site"].get("unfinished", 0), p["site"]["failed"])
            for n, p in phases.items()
        }
        check(
            f"{kind}: zero tokens lost or repeated at every N",
            all(a == b == 0 for a, b, _, _ in lost.values()),
            "; ".join(
                f"N={n}: {a} lost, {b} repeated" + (f", {c} replies unfinished in time" if c else "")
                for n, (a, b, c, _) in lost.items()
            ),
        )
        p = phases.get("50")
        if p:  # the second round's burst: 50 sends within one second
            s, d, r = p["site"], p["direct"], p["ratios"]
            for q, limit in (("p50", 30), ("p95", 100)):
                added = r.get(f"ttft_{q}_added_ms")
                check(
                    f"{kind}: N=50 TTFT ≤ direct + {limit} ms at the {q}",
                    added is not None and added <= limit,
                    f"site {f(s.get(f'ttft_{q}'))} ms, direct {f(d.get(f'ttft_{q}'))} ms, +{f(added)} ms",
                )
        p = phases.get("200")
        if p:
            s, d, r = p["site"], p["direct"], p["ratios"]
            check(f"{kind}: N=200 token latency p50 ≤ 10 ms", s["lat_p50"] <= 10, f"{s['lat_p50']:.1f} ms")
            check(f"{kind}: N=200 token latency p99 ≤ 50 ms", s["lat_p99"] <= 50, f"{s['lat_p99']:.1f} ms")
            added = r["ttft_p50_added_ms"]
            check(
                f"{kind}: N=200 TTFT ≤ direct + 30 ms at the median",
                added is not None and added <= 30,
                f"site {f(s['ttft_p50'])} ms, direct {f(d['ttft_p50'])} ms, +{f(added)} ms",
            )
            check(
                f"{kind}: N=200 server CPU ≤ 0.2 ms/token",
                s["server_ms_per_token"] <= 0.2,
                f"{s['server_ms_per_token']:.3f} ms",
            )
            check(f"{kind}: N=200 RSS < 300 MB", s["rss_peak_mb"] < 300, f"peak {s['rss_peak_mb']:.0f} MB")
        idle = config.get("idle")
        if idle:
            check(
                f"{kind}: idle socket ≤ 50 KB of RSS",
                idle["kb_per_socket"] <= 50,
                f"{idle['kb_per_socket']:.1f} KB each, {idle['sockets']} open",
            )
        lc = config.get("length_check")
        if lc:
            # Bounded by the flush interval (1 s): at most one UPDATE a second of streaming, plus the last.
            bounded = [
                x["writes_per_reply_max"] is not None
                and x["reply_seconds"] is not None
                and x["writes_per_reply_max"] <= math.ceil(x["reply_seconds"]) + 2
                for x in (lc["short"], lc["long"])
            ]
            check(
                f"{kind}: writes per reply follow its duration, not its length",
                all(bounded),
                "; ".join(
                    f"{x['tokens']} tokens in {f(x['reply_seconds'], 1)} s: {f(x['writes_per_reply'], 0)} UPDATEs "
                    f"(max {x['writes_per_reply_max']})"
                    for x in (lc["short"], lc["long"])
                ),
            )
        threads = config.get("threads")
        if threads and len(threads) >= 2:
            keys = sorted(threads, key=int)
            a, b = threads[keys[0]], threads[keys[-1]]
            for key, label in (("open_ms", "socket open"), ("ttft_ms", "first token"), ("page_ms", "page GET")):
                q = _ratio(b[key], a[key])
                check(
                    f"{kind}: thread of {keys[-1]} within 2× of {keys[0]} ({label})",
                    q is not None and q <= 2,
                    f"{f(a[key])} → {f(b[key])} ms, ×{f(q, 2)}",
                )
        multi = config.get("multi")
        if multi:
            r = multi["ratios"]
            check(
                f"{kind}: {multi['processes']} processes, N={multi['n']}: added latency ≤ 2× the direct floor",
                r["lat_p50"] is not None and r["lat_p50"] <= 2 and r["lat_p99"] <= 2,
                f"site/direct p50 ×{f(r['lat_p50'], 2)}, p99 ×{f(r['lat_p99'], 2)}; "
                f"client {f(multi['site']['client_cores'], 2)} cores",
            )
    return "\n".join(lines)
