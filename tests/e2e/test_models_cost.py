"""In Chromium: the model picker, a reply's model, tokens and cost, and /admin/usage/ with its charts
(drawn by the vendored Chart.js under the site's CSP); axe-core finds no serious or critical issue."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.async_api import expect

from conversations.models import ChatModel, Conversation, UsageRecord
from tests.e2e.conftest import db, screenshot
from tests.e2e.helpers import connected, reply_ends, send
from tests.e2e.test_accessibility import axe, serious
from tests.factories import default_persona, make_conversation, make_persona, make_user
from tests.fakes.provider import Reply

pytestmark = pytest.mark.asyncio(loop_scope="session")


def priced_models() -> None:
    ChatModel.objects.create(
        name="openai:gpt-test",
        label="GPT Test",
        input_price=Decimal("2.5"),
        cached_input_price=Decimal("1.25"),
        output_price=Decimal("10"),
    )
    ChatModel.objects.create(name="openai:gpt-big", label="GPT Big", input_price=Decimal(5), output_price=Decimal(20))


async def test_the_picker_sends_the_chosen_model_and_each_reply_shows_its_model_and_cost(web, alice, _provider_server):
    await db(priced_models)
    persona = await db(make_persona, "choosy", name="Choosy", allow_model_choice=True, model="openai:gpt-test")
    conversation = await db(make_conversation, alice, persona)
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await connected(page)
    picker = page.get_by_label("Model")
    await expect(picker).to_have_value("openai:gpt-test")
    _provider_server.script(
        Reply(text="The first answer.", input_tokens=1200, output_tokens=40),
        Reply(text="The second answer, by the big model.", input_tokens=1300, output_tokens=50),
    )
    await send(page, "Hello there")
    await reply_ends(page)
    await picker.select_option("openai:gpt-big")
    await send(page, "And now?")
    await expect(page.locator("article.msg-assistant")).to_have_count(2)
    await reply_ends(page)
    assert [r.json["model"] for r in _provider_server.requests] == ["gpt-test", "gpt-big"]
    models = page.locator("article.msg-assistant .msg-model")
    await expect(models).to_have_text(["gpt-test (OpenAI)", "gpt-big (OpenAI)"])
    # The second reply's details: its tokens and cost (1,300 in at $5 and 50 out at $20 per million).
    last = page.locator("article.msg-assistant").last
    await last.locator(".msg-usage summary").click()
    await expect(last.locator(".usage-cost")).to_have_text("$0.007500")
    await expect(last.locator(".usage-in")).to_have_text("1300")
    await screenshot(page, "cost-reply-details")
    # The choice stuck to the thread: a reload shows it.
    assert (await db(Conversation.objects.get, pk=conversation.pk)).model == "openai:gpt-big"
    await page.reload()
    await connected(page)
    await expect(page.get_by_label("Model")).to_have_value("openai:gpt-big")
    await page.locator("article.msg-assistant").last.locator(".msg-usage summary").click()
    found = serious(await axe(web, page, "cost-picker"), "picker")
    assert not found, "\n".join(found)


def a_month_of_usage() -> None:
    default_persona()
    coder = make_persona("coder", name="Coder")
    now = timezone.now()
    users = [make_user(f"user{i}") for i in range(6)]
    for day in range(30):
        for i, user in enumerate(users):
            conv = make_conversation(user, coder if i % 2 else None)
            UsageRecord.objects.create(
                user=user,
                conversation=conv,
                persona=conv.persona,
                model=["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5", "openai:gpt-4.1"][i % 3],
                kind="reply" if day % 5 else "summary",
                input_tokens=1000 + 300 * i + 40 * day,
                cached_input_tokens=600 + 20 * day,
                output_tokens=200 + 10 * i,
                cost=Decimal("0.001") * (i + 1) * (1 + day % 7),
                created_at=now - dt.timedelta(days=day, hours=i),
            )


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
async def test_the_usage_page_draws_its_charts_under_the_csp(web, dark):
    await db(a_month_of_usage)
    staff = await db(make_user, "sam", is_staff=True, is_superuser=True)
    page = await web.page(staff, "/admin/usage/", dark=dark)
    for chart in ("chart-tokens", "chart-cost", "chart-models", "chart-personas", "chart-users"):
        drawn = await page.evaluate(f"!!(window.Chart && Chart.getChart(document.getElementById('{chart}')))")
        assert drawn, chart
    labels = await page.evaluate("Chart.getChart(document.getElementById('chart-users')).data.labels")
    assert labels[0] == "user5" and len(labels) == 6
    await expect(page.locator(".usage-table table").first).to_contain_text("Calls")
    assert await web.csp_violations(page) == []
    theme = "dark" if dark else "light"
    await screenshot(page, f"usage-page-{theme}")
    found = serious(await axe(web, page, f"usage-{theme}"), f"usage {theme}")
    page = await web.page(staff, "/admin/conversations/chatmodel/", dark=dark)
    found += serious(await axe(web, page, f"models-{theme}"), f"models {theme}")
    await page.wait_for_load_state("networkidle")
    # Django's admin pages name no icon: the browser asks for /favicon.ico (as in test_accessibility).
    web.errors[:] = [e for e in web.errors if not e.endswith("/favicon.ico")]
    assert not found, "\n".join(found)
