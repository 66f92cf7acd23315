"""Reads for /admin/usage/: tokens and cost per day, model, persona and user, summed from the daily rollup."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import F, QuerySet, Sum

from conversations.models import DailyUsage, Persona

TOP_USERS = 10
TOTALS = {
    "calls": Sum("calls"),
    "input_tokens": Sum("input_tokens"),
    "cached_input_tokens": Sum("cached_input_tokens"),
    "cache_write_tokens": Sum("cache_write_tokens"),
    "output_tokens": Sum("output_tokens"),
    "cost": Sum("cost"),
}
COLUMNS = list(TOTALS)


@dataclass
class Report:
    """The numbers of one period: rows of (key, calls, input, cached, cache write, output, cost)."""

    start: dt.date
    end: dt.date
    total: dict[str, Any] = field(default_factory=dict)
    days: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    personas: list[dict[str, Any]] = field(default_factory=list)
    kinds: list[dict[str, Any]] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)

    def sections(self) -> list[tuple[str, list[dict[str, Any]]]]:
        return [
            ("day", self.days),
            ("model", self.models),
            ("persona", self.personas),
            ("kind", self.kinds),
            ("user", self.users),
        ]


def _period(start: dt.date, end: dt.date) -> QuerySet[DailyUsage]:
    return DailyUsage.objects.filter(day__gte=start, day__lte=end)


def _rows(qs: QuerySet[DailyUsage], key: Any, order: str = "-cost", limit: int | None = None) -> list[dict[str, Any]]:
    rows = qs.annotate(key=key).values("key").annotate(**TOTALS).order_by(order, "key")
    return [_clean(r) for r in (rows[:limit] if limit else rows)]


def _clean(row: Mapping[str, Any]) -> dict[str, Any]:
    return {**row, **{c: row.get(c) or (Decimal(0) if c == "cost" else 0) for c in COLUMNS}}


def _merged(groups: Iterable[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Any]) -> list[dict[str, Any]]:
    """Already summed rows added up again under `key`, the largest cost first (then by key)."""
    merged: dict[Any, dict[str, Any]] = {}
    for g in groups:
        k = key(g)
        row = merged.setdefault(k, _clean({"key": k}))
        for c in COLUMNS:
            row[c] += g[c] or 0
    return sorted(merged.values(), key=lambda r: (-r["cost"], r["key"]))


def usage_report(start: dt.date, end: dt.date, *, top_users: int = TOP_USERS) -> Report:
    """Every number of the page for [start, end] (UTC days): three GROUP BY queries on the daily rollup.

    Per day (and the total from it); per model, persona and kind at once (a few dozen rows, added up
    for each breakdown here); and the top users.
    """
    qs = _period(start, end)
    report = Report(start=start, end=end)
    by_day = {r["key"]: r for r in _rows(qs, F("day"), order="key")}
    # Every day of the period, the quiet ones as zeros, so the charts' x axis is even.
    report.days = [by_day.get(day) or _clean({"key": day}) for day in _days(start, end)]
    total = _merged(report.days, lambda _: "")
    report.total = total[0] if total else _clean({})
    combos = list(qs.values("model", "persona_ref", "kind").annotate(**TOTALS).order_by())
    names = dict(Persona.objects.filter(pk__in={g["persona_ref"] for g in combos}).values_list("pk", "name"))
    report.models = _merged(combos, lambda g: g["model"])
    # Calls without a persona, or whose persona is gone, count under their kind.
    report.personas = _merged(combos, lambda g: names.get(g["persona_ref"]) or g["kind"])
    report.kinds = _merged(combos, lambda g: g["kind"])
    report.users = _rows(qs, F("user__username"), limit=top_users)
    return report


def _days(start: dt.date, end: dt.date) -> Iterable[dt.date]:
    day = start
    while day <= end:
        yield day
        day += dt.timedelta(days=1)
