"""The daily usage rollup /admin/usage/ reads: the same numbers as the per-call records, kept in the
record's own transaction, through price changes, deleted accounts and deleted personas, and with
writers racing each other."""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
import threading
from collections import defaultdict
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test import Client

from accounts.services import account_delete
from conversations.llm.base import Usage
from conversations.models import ChatModel, DailyUsage, Persona, UsageRecord
from conversations.pricing import cost_of
from conversations.services import usage_record_call
from tests.factories import make_conversation, make_persona, make_user
from usage.selectors import COLUMNS, usage_report

UTC = dt.UTC


def expected_from_records(start: dt.date, end: dt.date) -> dict[tuple[str, str], list]:
    """What the page should show, summed in Python from every record (UTC days, persona name or kind)."""
    sums: dict[tuple[str, str], list] = defaultdict(lambda: [0, 0, 0, 0, 0, Decimal(0)])

    def add(key: tuple[str, str], r: UsageRecord) -> None:
        row = sums[key]
        for i, column in enumerate(COLUMNS):
            row[i] += getattr(r, column)

    for r in UsageRecord.objects.select_related("persona", "user"):
        day = r.created_at.astimezone(UTC).date()
        if not start <= day <= end:
            continue
        add(("day", str(day)), r)
        add(("model", r.model), r)
        add(("persona", r.persona.name if r.persona else r.kind), r)
        add(("kind", r.kind), r)
        add(("user", r.user.username), r)
        add(("total", ""), r)
    return dict(sums)


def shown(start: dt.date, end: dt.date) -> dict[tuple[str, str], list]:
    """What the page's report holds, days without usage left out."""
    report = usage_report(start, end, top_users=1000)
    rows = {(section, str(r["key"])): [r[c] for c in COLUMNS] for section, rs in report.sections() for r in rs}
    rows[("total", "")] = [report.total[c] for c in COLUMNS]
    return {k: v for k, v in rows.items() if v[0]}


def record(user, conv, model: str, kind: str, at: dt.datetime, tokens: tuple[int, int, int]) -> UsageRecord:
    usage = Usage(tokens[0], tokens[2], tokens[1], 0)
    return UsageRecord.objects.create(
        user=user,
        conversation=conv,
        persona=conv.persona,
        model=model,
        kind=kind,
        input_tokens=tokens[0],
        cached_input_tokens=tokens[1],
        output_tokens=tokens[2],
        cost=cost_of(model, usage),
        created_at=at,
    )


def test_the_page_shows_exactly_the_sums_of_the_records(db, charlie):
    rng = random.Random(7)
    mini = ChatModel.objects.create(
        name="openai:gpt-mini", input_price=Decimal("0.15"), cached_input_price=Decimal("0.075"),
        output_price=Decimal("0.6"),
    )  # fmt: skip
    ChatModel.objects.create(name="anthropic:claude-x", input_price=Decimal("3"), output_price=Decimal("15"))
    people = [make_user(name) for name in ("alice", "bob", "dave", "erin")]
    coder, writer = make_persona("coder"), make_persona("writer")
    convs = {u.pk: [make_conversation(u, coder), make_conversation(u, writer), make_conversation(u)] for u in people}
    today = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = (today - dt.timedelta(days=10)).date()  # the earliest call: 9 days and 86399 s ago

    def calls(n: int) -> None:
        for _ in range(n):
            user = rng.choice(people)
            at = today - dt.timedelta(days=rng.randint(0, 9), seconds=rng.choice([1, 60, 43200, 86399]))
            tokens_in = rng.randint(100, 5000)
            record(
                user, rng.choice(convs[user.pk]), rng.choice(["openai:gpt-mini", "anthropic:claude-x", "offline:demo"]),
                rng.choice(["reply", "reply", "summary", "title"]), at,
                (tokens_in, rng.randint(0, tokens_in), rng.randint(10, 900)),
            )  # fmt: skip

    calls(60)
    # Midnight UTC splits the days, as the page's days did before the rollup.
    record(people[0], convs[people[0].pk][0], "openai:gpt-mini", "reply", today - dt.timedelta(seconds=1), (7, 0, 7))
    record(people[0], convs[people[0].pk][0], "openai:gpt-mini", "reply", today, (5, 0, 5))
    # The price changes: calls before keep their cost, calls after cost the new price.
    usage_record_call(
        conversation=convs[people[1].pk][0], model="openai:gpt-mini", kind="summary",
        usage=Usage(1_000_000, 0, 0, 0), estimate=(0, 0),
    )  # fmt: skip
    mini.input_price = Decimal("0.30")
    mini.save()
    usage_record_call(
        conversation=convs[people[1].pk][0], model="openai:gpt-mini", kind="summary",
        usage=Usage(1_000_000, 0, 0, 0), estimate=(0, 0),
    )  # fmt: skip
    calls(40)
    made = UsageRecord.objects.count()
    assert shown(start, today.date()) == expected_from_records(start, today.date())

    # Two accounts go (their usage folds into the anonymous account) and a persona is deleted (its
    # threads first: they protect it); its calls then count under their kind.
    account_delete(user=people[2])
    account_delete(user=people[3])
    people = people[:2]
    for user in people:
        writers = convs[user.pk].pop(1)
        writers.delete()
    Persona.objects.filter(pk=writer.pk).delete()
    calls(30)
    assert UsageRecord.objects.filter(user__username="(deleted accounts)").exists()
    assert shown(start, today.date()) == expected_from_records(start, today.date())
    assert shown(start, today.date())[("total", "")][0] == made + 30  # every call counted, folded ones too
    costs = list(UsageRecord.objects.filter(kind="summary", input_tokens=1_000_000).values_list("cost", flat=True))
    assert sorted(costs) == [Decimal("0.15"), Decimal("0.30")]
    # Any period, e.g. three days in the middle.
    middle = (start + dt.timedelta(days=3), start + dt.timedelta(days=5))
    assert shown(*middle) == expected_from_records(*middle)

    # The CSV says the same.
    client = Client()
    client.force_login(charlie)
    body = client.get(f"/admin/usage/?start={start}&end={today.date()}&format=csv").content.decode()
    total = next(r for r in csv.reader(io.StringIO(body)) if r[0] == "total")
    want = expected_from_records(start, today.date())[("total", "")]
    assert total[2:] == [str(n) for n in want[:5]] + [f"{want[5]:.6f}"]


def test_a_stored_record_cannot_change(alice):
    saved = UsageRecord.objects.create(user=alice, model="openai:x", kind="reply", input_tokens=3)
    saved.input_tokens = 300
    with pytest.raises(ValueError, match="never changes"):
        saved.save()
    assert DailyUsage.objects.get(user=alice).input_tokens == 3


def test_a_record_and_its_rollup_are_stored_together_or_not_at_all(alice):
    with pytest.raises(RuntimeError), transaction.atomic():
        UsageRecord.objects.create(user=alice, model="openai:x", kind="reply", input_tokens=3)
        raise RuntimeError
    assert not UsageRecord.objects.exists() and not DailyUsage.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_writers_at_once_lose_no_call():
    """Threads (each its own connection) record calls on the same rollup rows at the same moment:
    the first call of each day races the INSERT, the others the UPDATE."""
    alice = make_user("alice")
    threads_n, days = 4, 6
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []
    base = dt.datetime(2026, 3, 1, 12, tzinfo=UTC)

    def writer(n: int) -> None:
        try:
            for day in range(days):
                barrier.wait(timeout=30)
                for _ in range(3):
                    UsageRecord.objects.create(
                        user=alice, model="openai:race", kind="reply", input_tokens=n + 1, output_tokens=1,
                        cost=Decimal("0.001"), created_at=base + dt.timedelta(days=day),
                    )  # fmt: skip
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    rows = list(DailyUsage.objects.order_by("day").values_list("day", "calls", "input_tokens", "cost"))
    per_day = (threads_n * 3, 3 * sum(range(1, threads_n + 1)), Decimal("0.001") * threads_n * 3)
    assert rows == [((base + dt.timedelta(days=d)).date(), *per_day) for d in range(days)]
    assert UsageRecord.objects.count() == threads_n * 3 * days


def test_rebuilding_from_the_records_gives_the_same_rows(alice, bob):
    conv = make_conversation(alice)
    for i in range(5):
        record(alice, conv, "openai:a", "reply", dt.datetime(2026, 1, 1 + i % 2, 23, tzinfo=UTC), (10, 1, 2))
        record(bob, make_conversation(bob), "openai:b", "title", dt.datetime(2026, 1, 3, tzinfo=UTC), (3, 0, 1))
    fields = ["day", "user_id", "model", "persona_ref", "kind", *COLUMNS]
    kept = sorted(DailyUsage.objects.values_list(*fields))
    assert DailyUsage.rebuild() == len(kept) == 3
    assert sorted(DailyUsage.objects.values_list(*fields)) == kept


@pytest.mark.django_db(transaction=True)
def test_the_migration_fills_the_rollup_from_the_records_already_stored():
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate([("conversations", "0010_daily_usage")])
    executor.loader.build_graph()
    old = executor.loader.project_state([("conversations", "0010_daily_usage")]).apps
    try:
        User = old.get_model("auth", "User")
        Record = old.get_model("conversations", "UsageRecord")
        Persona = old.get_model("conversations", "Persona")
        user = User.objects.create(username="old-timer")
        persona = Persona.objects.create(name="P", slug="p-rollup-migration")
        for hour, kind, persona_id in ((1, "reply", persona.pk), (23, "reply", persona.pk), (24, "reply", None)):
            Record.objects.create(
                user=user, model="openai:m", kind=kind, persona_id=persona_id, input_tokens=10, output_tokens=hour,
                cost=Decimal("0.5"), created_at=dt.datetime(2026, 2, 1, tzinfo=UTC) + dt.timedelta(hours=hour),
            )  # fmt: skip
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(latest)
    rows = sorted(
        DailyUsage.objects.filter(user_id=user.pk).values_list("day", "persona_ref", "calls", "output_tokens", "cost")
    )
    assert rows == [
        (dt.date(2026, 2, 1), persona.pk, 2, 24, Decimal("1")),
        (dt.date(2026, 2, 2), 0, 1, 24, Decimal("0.5")),
    ]
