"""Reads for /admin/usage/: tokens and cost per day, model, persona and user, aggregated in the database."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDate

from conversations.models import UsageRecord

TOP_USERS = 10
TOTALS = {
    "calls": Count("id"),
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


def _period(start: dt.date, end: dt.date) -> QuerySet[UsageRecord]:
    begin = dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC)
    stop = dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    return UsageRecord.objects.filter(created_at__gte=begin, created_at__lt=stop)


def _rows(qs: QuerySet[UsageRecord], key: Any, order: str = "-cost", limit: int | None = None) -> list[dict[str, Any]]:
    rows = qs.annotate(key=key).values("key").annotate(**TOTALS).order_by(order, "key")
    return [_clean(r) for r in (rows[:limit] if limit else rows)]


def _clean(row: Mapping[str, Any]) -> dict[str, Any]:
    return {**row, **{c: row.get(c) or (Decimal(0) if c == "cost" else 0) for c in COLUMNS}}


def usage_report(start: dt.date, end: dt.date, *, top_users: int = TOP_USERS) -> Report:
    """Every aggregate of the page for [start, end] (UTC days), five GROUP BY queries and one total."""
    qs = _period(start, end)
    report = Report(start=start, end=end)
    report.total = _clean(qs.aggregate(**TOTALS))
    by_day = {r["key"]: r for r in _rows(qs, TruncDate("created_at", tzinfo=dt.UTC), order="key")}
    # Every day of the period, the quiet ones as zeros, so the charts' x axis is even.
    day = start
    while day <= end:
        report.days.append(by_day.get(day) or _clean({"key": day}))
        day += dt.timedelta(days=1)
    report.models = _rows(qs, F("model"))
    report.personas = _rows(qs, Coalesce(F("persona__name"), F("kind")))
    report.kinds = _rows(qs, F("kind"))
    report.users = _rows(qs, F("user__username"), limit=top_users)
    return report
