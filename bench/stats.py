"""Summaries of what a phase measured: percentiles, and medians across repeated runs."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from .client import StreamResult


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize_streams(results: list[StreamResult], tokens: int) -> dict[str, Any]:
    """Latency, time to first token and integrity of one phase's replies."""
    latencies = [x for r in results for x in r.latencies]
    ttfts = [r.ttft_ms for r in results if r.ttft_ms is not None]
    errors = [r.error or r.status for r in results if r.error or r.status != "complete"]
    # Lost: tokens missing from a reply that ended; a reply the bench stopped waiting for is unfinished.
    ended = [r for r in results if r.status and r.error != "timeout"]
    return {
        "streams": len(results),
        "tokens_expected": tokens * len(results),
        "tokens_received": sum(len(set(r.indices)) for r in results),
        "lost": sum(r.lost(tokens) for r in ended),
        "unfinished": len(results) - len(ended),
        "repeated": sum(r.repeated() for r in results),
        "gaps": sum(r.gaps for r in results),
        "overlaps": sum(r.overlaps for r in results),
        "content_mismatches": sum(not r.content_matches for r in results),
        "failed": len(errors),
        "failures": sorted(set(errors))[:5],
        "lat_p50": percentile(latencies, 50),
        "lat_p90": percentile(latencies, 90),
        "lat_p99": percentile(latencies, 99),
        "lat_max": max(latencies) if latencies else None,
        "ttft_p50": percentile(ttfts, 50),
        "ttft_p95": percentile(ttfts, 95),
        "ttft_p99": percentile(ttfts, 99),
        "message_p50": percentile([r.message_ms for r in results if r.message_ms is not None], 50),
        "start_p50": percentile([r.start_ms for r in results if r.start_ms is not None], 50),
        "reply_seconds": median([r.seconds for r in results]),
        # Tokens per second the provider emitted (their stamps) and the client received (their
        # arrivals), each over its own span: from the phase's first token to its last.
        "emitted_tps": _rate([s for r in results for s in set(r.stamps)]),
        "delivered_tps": _rate([s + lat for r in results for s, lat in zip(r.stamps, r.latencies, strict=True)]),
        "lat_p99_by_second": p99_by_second(results),
    }


def p99_by_second(results: list[StreamResult]) -> list[float | None]:
    """The per-token latency's p99 (ms) of the tokens emitted in each second of the phase, from its first
    token on: whether the tail sits in the sends' first second, the replies' last, or all along."""
    if not any(r.stamps for r in results):
        return []
    start = min(s for r in results for s in r.stamps)
    by_second: dict[int, list[float]] = {}
    for r in results:
        for stamp, lat in zip(r.stamps, r.latencies, strict=True):
            by_second.setdefault(int((stamp - start) // 1000), []).append(lat)
    return [
        round(p, 1) if (p := percentile(by_second.get(i, []), 99)) is not None else None
        for i in range(max(by_second) + 1)
    ]


def _rate(times_ms: list[float]) -> float | None:
    """Events per second over the span of their times (ms)."""
    if len(times_ms) < 2:
        return None
    span = max(times_ms) - min(times_ms)
    return (len(times_ms) - 1) * 1000 / span if span > 0 else None


SUMMED = {"lost", "unfinished", "repeated", "gaps", "overlaps", "content_mismatches", "failed"}


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one phase: integrity counts summed, everything else the median."""
    out: dict[str, Any] = {"runs": len(runs)}
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        if key in SUMMED:
            out[key] = sum(v or 0 for v in values)
        elif all(isinstance(v, int | float) or v is None for v in values):
            out[key] = median(values)
        elif key == "failures":
            out[key] = sorted({f for v in values for f in v or []})[:5]
        elif key == "lat_p99_by_second":
            out[key] = values  # one list per run: seconds do not line up across runs to take a median of
        else:
            out[key] = values[0]
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


STAGES = ("db_start", "stored", "request", "task", "provider", "first_token", "published")


def stage_summary(log_text: str, reply_ids: set[int]) -> dict[str, Any]:
    """The server's per-stage timings of these replies' sends (conversations/timing.py: one
    `stage-timing {json}` line per reply, seconds since the frame arrived), as `stage_<name>_p50`
    and `_p95` in milliseconds."""
    rows = []
    for line in log_text.splitlines():
        _, mark, payload = line.partition("stage-timing ")
        if not mark:
            continue
        try:
            row = json.loads(payload)
        except ValueError:
            continue
        if row.get("reply") in reply_ids:
            rows.append(row)
    out: dict[str, Any] = {"stage_replies": len(rows)}
    for stage in STAGES:
        values = [r[stage] * 1000 for r in rows if stage in r]
        out[f"stage_{stage}_p50"] = percentile(values, 50)
        out[f"stage_{stage}_p95"] = percentile(values, 95)
    return out


def loop_lag_summary(log_text: str, start: float, end: float) -> dict[str, Any]:
    """How late the server's event loop fired its lag timer during [start, end] (epoch seconds), from
    the `loop-lag {json}` lines daphne logs each second with `CHAT_LOOP_LAG` (conversations/timing.py):
    p50, p99 and max in milliseconds, over every firing of the windows that overlap the phase."""
    lags: list[float] = []
    for line in log_text.splitlines():
        _, mark, payload = line.partition("loop-lag ")
        if not mark:
            continue
        try:
            row = json.loads(payload)
        except ValueError:
            continue
        if isinstance(row, dict) and "lags" in row and row["to"] > start and row["from"] < end:
            lags += row["lags"]
    return {
        "loop_lag_samples": len(lags),
        "loop_lag_p50": percentile(lags, 50),
        "loop_lag_p99": percentile(lags, 99),
        "loop_lag_max": max(lags) if lags else None,
    }
