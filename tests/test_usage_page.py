"""/admin/usage/ (staff only: charts, tables, CSV from database aggregates) and the model registry's admin,
filled from the providers' model lists through the real SDKs and the fake provider."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from conversations.models import ChatModel, UsageRecord
from tests.factories import make_conversation, make_persona, make_user


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def usage(alice, bob):
    """Three days of calls by alice and bob on two models and two personas."""
    now = timezone.now().replace(hour=12)
    coder = make_persona("coder")
    rows = [
        (alice, coder, "openai:gpt-a", "reply", 1000, 200, 100, "0.010000", 0),
        (alice, coder, "openai:gpt-a", "summary", 500, 0, 50, "0.002000", 0),
        (bob, None, "anthropic:claude-b", "reply", 3000, 2500, 300, "0.050000", 1),
        (bob, None, "anthropic:claude-b", "title", 40, 0, 5, "0.000100", 2),
        (bob, None, "anthropic:claude-b", "reply", 9, 0, 9, "9.000000", 40),  # outside the period
    ]
    for user, persona, model, kind, tokens_in, cached, out, cost, days_ago in rows:
        conv = make_conversation(user, persona)
        UsageRecord.objects.create(
            user=user,
            conversation=conv,
            persona=conv.persona,
            model=model,
            kind=kind,
            input_tokens=tokens_in,
            cached_input_tokens=cached,
            output_tokens=out,
            cost=Decimal(cost),
            created_at=now - dt.timedelta(days=days_ago),
        )
    return now.date()


def test_it_is_for_staff_only(alice, db):
    assert client_for(alice).get("/admin/usage/").status_code == 302
    assert Client().get("/admin/usage/").status_code == 302


def test_it_shows_tokens_and_cost_by_day_model_persona_and_user(charlie, usage, django_assert_max_num_queries):
    client = client_for(charlie)
    start = (usage - dt.timedelta(days=6)).isoformat()
    with django_assert_max_num_queries(12):
        response = client.get(f"/admin/usage/?start={start}&end={usage.isoformat()}")
    page = response.content.decode()
    assert response.status_code == 200
    assert "<strong>4</strong> provider calls" in page and "<strong>4540</strong> input tokens" in page
    assert "$0.062100" in page  # 0.01 + 0.002 + 0.05 + 0.0001; the 40-day-old call is outside
    assert 'src="/static/vendor/chartjs/chart.umd.js"' in page and 'id="usage-data"' in page
    assert "<script>" not in page.replace('<script id="usage-data" type="application/json">', "")
    data = response.context["chart_data"]
    assert len(data["days"]["labels"]) == 7 and sum(data["days"]["input_tokens"]) == 4540
    assert data["models"]["labels"] == ["anthropic:claude-b", "openai:gpt-a"]  # by cost
    assert data["users"]["labels"] == ["bob", "alice"]
    assert set(data["personas"]["labels"]) == {"Assistant", "Coder"}


def test_it_downloads_the_same_numbers_as_csv(charlie, usage):
    start = (usage - dt.timedelta(days=6)).isoformat()
    response = client_for(charlie).get(f"/admin/usage/?start={start}&end={usage.isoformat()}&format=csv")
    assert response["Content-Type"].startswith("text/csv") and "attachment" in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0][:3] == ["breakdown", "key", "calls"]
    by = {(r[0], r[1]): r for r in rows[1:]}
    assert by[("model", "openai:gpt-a")][2:] == ["2", "1500", "200", "0", "150", "0.012000"]
    assert by[("user", "bob")][-1] == "0.050100"
    assert by[("total", "")][-1] == "0.062100"
    assert sum(1 for r in rows if r[0] == "day") == 7


def test_a_bad_period_is_explained_not_a_crash(charlie, db):
    page = client_for(charlie).get("/admin/usage/?start=yesterday&end=2020-01-01").content.decode()
    assert "is not a date" in page


def test_a_username_cannot_become_a_spreadsheet_formula(charlie, db):
    evil = make_user("=HYPERLINK(1)")
    UsageRecord.objects.create(user=evil, model="openai:x", kind="reply", input_tokens=1, cost=Decimal(1))
    body = client_for(charlie).get("/admin/usage/?format=csv").content.decode()
    assert "'=HYPERLINK(1)" in body and "\nuser,=" not in body


def test_it_fills_the_registry_from_both_providers_without_overwriting_staff(charlie, fake_provider):
    ChatModel.objects.create(name="openai:gpt-4o-mini", label="Mini", input_price=Decimal("0.15"), is_active=True)
    client = client_for(charlie)
    page = client.get("/admin/conversations/chatmodel/").content.decode()
    assert "Fill from providers" in page
    response = client.post("/admin/conversations/chatmodel/sync/", follow=True)
    assert response.status_code == 200
    entries = {m.name: m for m in ChatModel.objects.all()}
    assert set(entries) == {
        "openai:gpt-4o-mini",
        "openai:gpt-4.1",
        "anthropic:claude-haiku-4-5",
        "anthropic:claude-sonnet-4-5",
    }
    kept = entries["openai:gpt-4o-mini"]
    assert (kept.label, kept.input_price, kept.is_active) == ("Mini", Decimal("0.15"), True)
    assert entries["anthropic:claude-haiku-4-5"].label == "Claude Haiku 4.5"
    assert not entries["openai:gpt-4.1"].is_active  # new ones wait for staff to price them
    paths = {(r.path, "anthropic-version" in r.headers) for r in fake_provider.requests}
    assert paths == {("/v1/models", False), ("/v1/models", True)}
    # Again: nothing new, nothing changed.
    client.post("/admin/conversations/chatmodel/sync/")
    assert ChatModel.objects.count() == 4


def test_a_provider_that_cannot_list_is_reported(charlie, fake_provider, settings):
    settings.ANTHROPIC_API_KEY = settings.ANTHROPIC_BASE_URL = ""
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens there
    response = client_for(charlie).post("/admin/conversations/chatmodel/sync/", follow=True)
    assert "Could not list models of openai" in response.content.decode()
    assert not ChatModel.objects.exists()
