"""/admin/usage/: charts and tables of tokens and cost over a chosen period, and the same as CSV (staff only)."""

from __future__ import annotations

import csv
import datetime as dt
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from conversations.pricing import cost_text

from .selectors import COLUMNS, Report, usage_report

DEFAULT_DAYS = 30
MAX_DAYS = 366 * 2


def _date(value: str | None, default: dt.date) -> tuple[dt.date, str | None]:
    if not value:
        return default, None
    try:
        return dt.date.fromisoformat(value), None
    except ValueError:
        return default, f"{value!r} is not a date (YYYY-MM-DD): showing the default period."


def period(request: HttpRequest) -> tuple[dt.date, dt.date, list[str]]:
    """The chosen [start, end] from `?start=&end=` (default: the last 30 days), with any complaints."""
    today = timezone.now().date()
    end, bad_end = _date(request.GET.get("end"), today)
    start, bad_start = _date(request.GET.get("start"), end - dt.timedelta(days=DEFAULT_DAYS - 1))
    errors = [e for e in (bad_start, bad_end) if e]
    if start > end:
        errors.append("The start is after the end: showing the 30 days up to the end.")
        start = end - dt.timedelta(days=DEFAULT_DAYS - 1)
    if (end - start).days >= MAX_DAYS:
        errors.append(f"At most {MAX_DAYS} days at once: the start was moved.")
        start = end - dt.timedelta(days=MAX_DAYS - 1)
    return start, end, errors


def _chart_data(report: Report) -> dict[str, Any]:
    def series(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "labels": [str(r["key"]) for r in rows],
            "cost": [float(r["cost"]) for r in rows],
            **{c: [r[c] for r in rows] for c in ("input_tokens", "cached_input_tokens", "output_tokens")},
        }

    return {
        "days": series(report.days),
        "models": series(report.models),
        "personas": series(report.personas),
        "users": series(report.users),
    }


@staff_member_required
def usage_page(request: HttpRequest) -> HttpResponse:
    """The charts and tables; `?format=csv` downloads the same numbers."""
    start, end, errors = period(request)
    report = usage_report(start, end)
    if request.GET.get("format") == "csv":
        return _csv(report)
    context = {
        **admin.site.each_context(request),
        "title": "Usage and cost",
        "report": report,
        "errors": errors,
        "chart_data": _chart_data(report),
        "total_cost": cost_text(report.total["cost"]),
        "query": f"start={start.isoformat()}&end={end.isoformat()}",
    }
    return TemplateResponse(request, "usage/usage.html", context)


def _cell(value: object) -> object:
    """A CSV cell a spreadsheet will not run: text starting with = + - @ gets a leading quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv(report: Report) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    name = f"usage-{report.start.isoformat()}-{report.end.isoformat()}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    writer = csv.writer(response)
    writer.writerow(["breakdown", "key", *COLUMNS])

    def numbers(row: dict[str, object]) -> list[object]:
        return [cost_text(row[c]) if c == "cost" else row[c] for c in COLUMNS]  # type: ignore[arg-type]

    for section, rows in report.sections():
        for row in rows:
            writer.writerow([section, _cell(str(row["key"])), *numbers(row)])
    writer.writerow(["total", "", *numbers(report.total)])
    return response
