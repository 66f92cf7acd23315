"""The usage page on a year of usage: `python -m bench.usage_page [--users 1000] [--days 365] [--calls 3] [--write]`.

Seeds a scratch database (SQLite in a temporary directory, or `--database-url`, e.g. PostgreSQL) with
`users` users, each making on average `calls` provider calls a day for `days` days (replies mostly,
some summaries and titles, over four models and five personas), then times `/admin/usage/` as a staff
member sees it (the page and its CSV) for the last 30 days and for the whole year. `--write` puts the
table into docs/performance.md under "## Usage page".

The records are seeded with `bulk_create`, which skips the per-call rollup; the daily rollup the page
reads is then filled by `DailyUsage.rebuild()` (the same GROUP BY as the migration that fills it on an
existing site), and checked against the records' totals. The per-call write path (a record and its
rollup upsert) is timed on its own against a bare insert.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

from .scratch import scratch_site

ROOT = Path(__file__).resolve().parent.parent
MODELS = [
    ("openai:gpt-4o-mini", Decimal("0.15"), Decimal("0.075"), Decimal("0.6")),
    ("openai:gpt-4.1", Decimal("2"), Decimal("0.5"), Decimal("8")),
    ("anthropic:claude-haiku-4-5", Decimal("1"), Decimal("0.1"), Decimal("5")),
    ("anthropic:claude-sonnet-4-5", Decimal("3"), Decimal("0.3"), Decimal("15")),
]


def seed(users: int, days: int, calls: float, rng: random.Random, *, even: bool = False) -> int:
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from conversations.models import Conversation, Persona, UsageRecord

    User = get_user_model()
    personas = [Persona.objects.create(name=f"Persona {i}", slug=f"persona-{i}") for i in range(5)]
    people = User.objects.bulk_create([User(username=f"user{i:04d}") for i in range(users)])
    people = list(User.objects.filter(username__startswith="user").order_by("id"))
    convs = Conversation.objects.bulk_create(
        [Conversation(owner=u, persona=rng.choice(personas)) for u in people for _ in range(3)]
    )
    by_owner: dict[int, list[Conversation]] = {}
    for c in convs:
        by_owner.setdefault(c.owner_id, []).append(c)
    now = timezone.now()
    total = 0
    batch: list[UsageRecord] = []
    for day in range(days):
        midnight = now - dt.timedelta(days=day)
        n = int(users * calls * rng.uniform(0.7, 1.3))
        for _ in range(n):
            # A few heavy users and a long tail; or, --even, every user alike (the rollup's worst case).
            user = rng.choice(people) if even else people[int(rng.paretovariate(1.2)) % users]
            conv = rng.choice(by_owner[user.pk])
            model, price_in, price_cached, price_out = rng.choice(MODELS)
            kind = rng.choices(["reply", "summary", "title"], [90, 7, 3])[0]
            tokens_in = rng.randint(200, 8000)
            cached = rng.randint(0, tokens_in)
            out = rng.randint(20, 800)
            cost = ((tokens_in - cached) * price_in + cached * price_cached + out * price_out) / 1_000_000
            batch.append(
                UsageRecord(
                    user_id=user.pk,
                    conversation_id=conv.pk,
                    persona_id=conv.persona_id,
                    model=model,
                    kind=kind,
                    input_tokens=tokens_in,
                    cached_input_tokens=cached,
                    output_tokens=out,
                    cost=cost.quantize(Decimal("0.00000001")),
                    created_at=midnight - dt.timedelta(seconds=rng.randint(0, 86399)),
                )
            )
            if len(batch) >= 20_000:
                with transaction.atomic():
                    UsageRecord.objects.bulk_create(batch)
                total += len(batch)
                batch = []
    with transaction.atomic():
        UsageRecord.objects.bulk_create(batch)
    return total + len(batch)


def fill_rollup() -> tuple[int, float]:
    """Fill the rollup from the seeded records and check it against them; (rows, seconds)."""
    from django.db.models import Sum

    from conversations.models import SUMMED, DailyUsage, UsageRecord

    started = time.perf_counter()
    rows = DailyUsage.rebuild()
    took = time.perf_counter() - started
    rolled = DailyUsage.objects.aggregate(**{f: Sum(f) for f in SUMMED})
    summed = UsageRecord.objects.aggregate(**{f: Sum(f) for f in SUMMED})
    # SQLite keeps decimals as floats: its sums agree to far below a cent, PostgreSQL's exactly.
    assert abs(rolled.pop("cost") - summed.pop("cost")) < Decimal("0.000001") and rolled == summed, (rolled, summed)
    return rows, took


def write_cost(n: int) -> tuple[float, float]:
    """Median milliseconds to store one call: (a bare INSERT of the record, the record and its rollup upsert)."""
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from conversations.models import UsageRecord

    user = get_user_model().objects.create(username="bench-writer")  # its rows go with it below
    fields = {"user": user, "model": MODELS[0][0], "kind": "reply", "input_tokens": 900, "output_tokens": 90}
    bare, full = [], []
    for _ in range(n):
        started = time.perf_counter()
        with transaction.atomic():
            UsageRecord.objects.bulk_create([UsageRecord(**fields)])  # bulk_create skips the rollup
        bare.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        UsageRecord.objects.create(**fields)
        full.append((time.perf_counter() - started) * 1000)
    user.delete()  # its records and rollup rows cascade: the seeded numbers stay as they were
    return statistics.median(bare), statistics.median(full)


def timed(client, url: str, runs: int) -> tuple[float, float]:
    """(median, max) milliseconds of GET url."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(url)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200 and body, (url, response.status_code)
    return statistics.median(times), max(times)


def write_section(title: str, body: str) -> None:
    """Put `body` under `### title` in the "## Usage page" section of docs/performance.md (replacing it)."""
    path = ROOT / "docs" / "performance.md"
    text = path.read_text()
    page = re.search(r"^## Usage page\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if page is None:
        text = text.rstrip("\n") + "\n\n## Usage page\n\n"
        page = re.search(r"^## Usage page\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
        assert page is not None
    section = page.group(0)
    block = f"### {title}\n\n{body}\n\n"
    old = re.search(rf"^### {re.escape(title)}\n.*?(?=^### |\Z)", section, flags=re.S | re.M)
    section = section[: old.start()] + block + section[old.end() :] if old else section.rstrip("\n") + "\n\n" + block
    text = text[: page.start()] + section + text[page.end() :]
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--calls", type=float, default=3.0, help="provider calls per user per day, on average")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--even", action="store_true", help="every user equally active (default: a long tail)")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    with scratch_site(args.database_url, "usage.sqlite3", ALLOWED_HOSTS="testserver,localhost"):
        import django.utils.timezone
        from django.conf import settings
        from django.db import connection
        from django.test import Client

        from tests.factories import make_user

        started = time.perf_counter()
        rows = seed(args.users, args.days, args.calls, random.Random(11), even=args.even)
        seeded = time.perf_counter() - started
        rollup_rows, filled = fill_rollup()
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
        bare_ms, full_ms = write_cost(200)
        staff = make_user(f"bench-staff-{int(time.time())}", is_staff=True, is_superuser=True)
        client = Client()
        client.force_login(staff)
        settings.DEBUG = False
        today = django.utils.timezone.now().date()
        year = (today - dt.timedelta(days=args.days - 1)).isoformat()
        cases = [
            ("last 30 days (the default)", "/admin/usage/"),
            ("last 30 days, CSV", "/admin/usage/?format=csv"),
            (f"the whole {args.days} days", f"/admin/usage/?start={year}&end={today.isoformat()}"),
            (f"the whole {args.days} days, CSV", f"/admin/usage/?start={year}&end={today.isoformat()}&format=csv"),
        ]
        spread = "every user alike" if args.even else "a few heavy users and a long tail"
        title = f"{connection.vendor}, {spread}"
        lines = [
            f"`/admin/usage/` on {rows:,} usage records: {args.users:,} users, {args.days} days, about "
            f"{args.calls:g} calls per user per day, {spread} (seeded in {seeded:.0f} s by `bench/usage_page.py` with "
            f"`bulk_create`), rolled up into {rollup_rows:,} daily rows by `DailyUsage.rebuild()` in {filled:.1f} s "
            f"(the migration's GROUP BY; totals checked against the records), {connection.vendor}, the Django "
            f"test client in one process on this 2-core machine shared with other work (load average "
            f"{os.getloadavg()[0]:.1f} at the start), {args.runs} runs each (the first warms up).",
            "",
            "| period | median ms | max ms |",
            "|---|---:|---:|",
        ]
        for name, url in cases:
            client.get(url)
            median, worst = timed(client, url, args.runs)
            lines.append(f"| {name} | {median:,.0f} | {worst:,.0f} |")
        lines += [
            "",
            f"Storing one call, median of 200: {full_ms:.2f} ms for the record and its rollup upsert in one "
            f"transaction, against {bare_ms:.2f} ms for the record alone (load average {os.getloadavg()[0]:.1f} "
            "at the end).",
            f"Reproduce: `.venv/bin/python -m bench.usage_page --users {args.users} --days {args.days} "
            f"--calls {args.calls:g}{' --even' if args.even else ''}"
            f"{' --database-url ...' if args.database_url else ''} --write`.",
        ]
    body = "\n".join(lines)
    print(f"### {title}\n\n{body}")
    if args.write:
        write_section(title, body)
        print(f"wrote docs/performance.md ## Usage page ### {title}", file=sys.stderr)


if __name__ == "__main__":
    main()
