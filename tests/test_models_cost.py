"""The model registry, the model picker, access rules on every path that starts a reply, usage and cost
per call (replies, summaries, titles) and prompt caching: through the real SDKs and the fake provider."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.test import Client

from conversations import limits, summaries
from conversations.context import SUMMARY_SYSTEM
from conversations.models import ChatModel, Conversation, Message, Persona, UsageRecord
from tests.conftest import open_socket
from tests.factories import make_conversation, make_persona, make_turns
from tests.fakes.provider import Reply

pytestmark = pytest.mark.django_db(transaction=True)

PRICES = {"input_price": Decimal("2.5"), "cached_input_price": Decimal("1.25"), "output_price": Decimal("10")}


def registry(name: str, *groups: Group, **fields) -> ChatModel:
    entry = ChatModel.objects.create(name=name, **{**PRICES, **fields})
    entry.groups.set(groups)
    return entry


@pytest.fixture
def secret(db):
    """`openai:gpt-secret`, for the `insiders` group only; `openai:gpt-open`, for everyone."""
    insiders = Group.objects.create(name="insiders")
    registry("openai:gpt-open", label="Open model")
    registry("openai:gpt-secret", insiders, label="Secret model")
    return insiders


def choosy(**fields) -> Persona:
    return make_persona("choosy", allow_model_choice=True, model="openai:gpt-open", **fields)


async def opened(user, conv):
    ok, ws = await open_socket(user, conv.pk)
    assert ok
    await ws.recv()  # state
    return ws


async def send(ws, content: str, **extra) -> dict:
    """Send a message; the reply's `end`, or the refusal's `error`."""
    await ws.send({"type": "send", "client_id": str(uuid.uuid4()), "content": content, **extra})
    while True:
        frame = await ws.recv(timeout=45)
        if frame["type"] in ("end", "error"):
            return frame


def chat_bodies(provider, path: str) -> list[dict]:
    return [
        r.json
        for r in provider.requests
        if r.path == path and (r.json.get("messages") or [{}])[0].get("content") != SUMMARY_SYSTEM
    ]


# -- access: a group-restricted model is refused to others on every path ---------------------------------
async def test_it_refuses_a_restricted_model_on_send_and_stores_nothing(alice, bob, secret, fake_provider):
    await sync_to_async(alice.groups.add)(secret)
    persona = await sync_to_async(choosy)()
    for user in (alice, bob):
        conv = await sync_to_async(make_conversation)(user, persona)
        ws = await opened(user, conv)
        frame = await send(ws, "Hello", model="openai:gpt-secret")
        if user is alice:
            assert frame["type"] == "end" and frame["status"] == "complete"
        else:
            assert frame["type"] == "error" and frame["code"] == "invalid"
            assert "not available" in frame["message"]
            assert not await sync_to_async(Message.objects.filter(conversation=conv).exists)()
        await ws.close()
    assert [b["model"] for b in chat_bodies(fake_provider, "/v1/chat/completions")] == ["gpt-secret"]


async def test_it_refuses_unknown_inactive_and_unchosen_models(alice, secret, fake_provider):
    await sync_to_async(registry)("openai:gpt-retired", is_active=False)
    conv = await sync_to_async(make_conversation)(alice, await sync_to_async(choosy)())
    fixed = await sync_to_async(make_conversation)(alice, await sync_to_async(make_persona)("fixed"))
    ws = await opened(alice, conv)
    for model in ("openai:gpt-unlisted", "openai:gpt-retired", 42, "nonsense"):
        frame = await send(ws, "Hello", model=model)
        assert frame["type"] == "error" and frame["code"] == "invalid", model
    await ws.close()
    ws = await opened(alice, fixed)
    frame = await send(ws, "Hello", model="openai:gpt-open")  # the persona allows no choice
    assert frame["type"] == "error" and frame["code"] == "invalid"
    await ws.close()
    assert not await sync_to_async(Message.objects.exists)()
    assert fake_provider.requests == []


async def test_a_persona_whose_own_model_is_restricted_is_refused_on_send_and_regenerate(
    alice, bob, secret, fake_provider
):
    persona = await sync_to_async(make_persona)("insider", model="openai:gpt-secret")
    conv = await sync_to_async(make_conversation)(bob, persona)
    await sync_to_async(make_turns)(conv, 2)
    ws = await opened(bob, conv)
    frame = await send(ws, "Hello")
    assert frame["type"] == "error" and frame["code"] == "invalid"
    await ws.send({"type": "regenerate"})
    frame = await ws.until("error", timeout=10)
    assert frame["code"] == "invalid"
    await ws.close()
    assert await sync_to_async(Message.objects.filter(conversation=conv).count)() == 2
    assert fake_provider.requests == []
    # Once bob joins the group, both paths work.
    await sync_to_async(bob.groups.add)(secret)
    ws = await opened(bob, conv)
    await ws.send({"type": "regenerate"})
    end = await ws.until("end", timeout=20)
    assert end["status"] == "complete"
    await ws.close()


def test_the_page_offers_only_the_models_a_user_may_use(alice, bob, secret):
    alice.groups.add(secret)
    persona = choosy()
    pages = {}
    for user in (alice, bob):
        client = Client()
        client.force_login(user)
        pages[user.username] = client.get(make_conversation(user, persona).get_absolute_url()).content.decode()
    assert 'id="model-picker"' in pages["alice"] and 'value="openai:gpt-secret"' in pages["alice"]
    assert 'id="model-picker"' in pages["bob"] and "gpt-secret" not in pages["bob"]
    # A persona without a choice shows no picker.
    client = Client()
    client.force_login(bob)
    page = client.get(make_conversation(bob, make_persona("fixed")).get_absolute_url()).content.decode()
    assert 'id="model-picker"' not in page


def test_the_admin_preview_refuses_a_restricted_model_to_staff_outside_its_groups(charlie, secret, fake_provider):
    persona = make_persona("insider", model="openai:gpt-secret")
    client = Client()
    client.force_login(charlie)
    url = f"/admin/conversations/persona/{persona.pk}/preview/"
    page = client.post(url, {"message": "Hello"}).content.decode()
    assert "not available to you" in page
    assert fake_provider.requests == []
    charlie.groups.add(secret)
    page = client.post(url, {"message": "Hello"}).content.decode()
    assert "not available to you" not in page and len(fake_provider.requests) == 1


# -- switching model mid-thread ---------------------------------------------------------------------------------
async def test_switching_model_mid_thread_sends_the_same_history_to_the_new_model(alice, secret, fake_provider):
    await sync_to_async(registry)("openai:gpt-other")
    await sync_to_async(registry)("anthropic:claude-other")
    conv = await sync_to_async(make_conversation)(alice, await sync_to_async(choosy)())
    ws = await opened(alice, conv)
    fake_provider.script(Reply(text="first answer"), Reply(text="second answer"), Reply(text="third answer"))
    assert (await send(ws, "one"))["status"] == "complete"
    assert (await send(ws, "two", model="openai:gpt-other"))["status"] == "complete"
    assert (await send(ws, "three", model="anthropic:claude-other"))["status"] == "complete"
    starts = [f["model"] for f in ws.frames if f["type"] == "start"]
    await ws.close()
    assert starts == ["openai:gpt-open", "openai:gpt-other", "anthropic:claude-other"]
    first, second = chat_bodies(fake_provider, "/v1/chat/completions")
    assert (first["model"], second["model"]) == ("gpt-open", "gpt-other")
    assert second["messages"] == [*first["messages"], {"role": "assistant", "content": "first answer"}] + [
        {"role": "user", "content": "two"}
    ]
    [third] = chat_bodies(fake_provider, "/v1/messages")
    assert third["model"] == "claude-other" and third["system"] == first["messages"][0]["content"]
    history = [(m["role"], m["content"]) for m in second["messages"][1:]]
    history += [("assistant", "second answer"), ("user", "three")]
    assert [(m["role"], _text(m["content"])) for m in third["messages"]] == history
    # The choice sticks to the thread, and each reply keeps the model that wrote it.
    conv = await sync_to_async(Conversation.objects.get)(pk=conv.pk)
    assert conv.model == "anthropic:claude-other"
    models = await sync_to_async(lambda: list(conv.messages.filter(role="assistant").values_list("model", flat=True)))()
    assert models == starts
    page = await sync_to_async(_page_of)(alice, conv)
    assert '<option value="anthropic:claude-other" selected>' in page
    assert page.count('class="msg-model"') == 3 and "claude-other (Anthropic)" in page


def _page_of(user, conv) -> str:
    client = Client()
    client.force_login(user)
    return client.get(conv.get_absolute_url()).content.decode()


def _text(content) -> str:
    return content if isinstance(content, str) else "".join(block["text"] for block in content)


# -- usage and cost -------------------------------------------------------------------------------------------------
LONG = 45  # turns of 30 words: well past the 1,024 tokens both providers' caches start at


async def test_openai_cached_tokens_are_stored_and_priced(alice, fake_provider, settings):
    settings.CHAT_DEFAULT_MODEL = "openai:gpt-priced"
    await sync_to_async(registry)("openai:gpt-priced")
    conv = await sync_to_async(make_conversation)(alice)
    await sync_to_async(make_turns)(conv, LONG, words=30)
    ws = await opened(alice, conv)
    first = await send(ws, "first question")
    second = await send(ws, "second question")
    await ws.close()
    bodies = chat_bodies(fake_provider, "/v1/chat/completions")
    assert bodies[0]["prompt_cache_key"] == bodies[1]["prompt_cache_key"]
    assert str(conv.pk) not in bodies[0]["prompt_cache_key"]
    assert first["usage"]["cached_input_tokens"] == 0
    cached = second["usage"]["cached_input_tokens"]
    assert cached >= 1024 and (cached - 1024) % 128 == 0 and cached < second["usage"]["input_tokens"]
    reply = await sync_to_async(Message.objects.get)(pk=second["message_id"])
    assert (reply.input_tokens, reply.cached_input_tokens) == (second["usage"]["input_tokens"], cached)
    expected = (
        (reply.input_tokens - cached) * Decimal("2.5") + cached * Decimal("1.25") + reply.output_tokens * Decimal(10)
    ) / 1_000_000
    assert reply.cost == expected.quantize(Decimal("0.00000001")) and reply.cost > 0
    assert second["usage"]["cost"] == str(expected.quantize(Decimal("0.000001")))
    record = await sync_to_async(UsageRecord.objects.get)(message=reply)
    assert (record.kind, record.cached_input_tokens, record.cost) == ("reply", cached, reply.cost)
    # A later price change does not rewrite history.
    await sync_to_async(ChatModel.objects.filter(name="openai:gpt-priced").update)(input_price=Decimal(100))
    await sync_to_async(reply.refresh_from_db)()
    assert reply.cost == expected.quantize(Decimal("0.00000001"))


async def test_anthropic_cache_writes_and_reads_are_stored_and_priced(alice, fake_provider, settings):
    settings.CHAT_DEFAULT_MODEL = "anthropic:claude-priced"
    await sync_to_async(registry)("anthropic:claude-priced", cache_write_price=Decimal("3.125"))
    conv = await sync_to_async(make_conversation)(alice)
    await sync_to_async(make_turns)(conv, LONG, words=30)
    ws = await opened(alice, conv)
    first = await send(ws, "first question")
    second = await send(ws, "second question")
    await ws.close()
    bodies = chat_bodies(fake_provider, "/v1/messages")
    assert bodies[1]["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    one = await sync_to_async(Message.objects.get)(pk=first["message_id"])
    two = await sync_to_async(Message.objects.get)(pk=second["message_id"])
    assert one.cached_input_tokens == 0 and one.cache_write_tokens > 1024
    assert two.cached_input_tokens == one.input_tokens  # the whole first request, read back
    # Only the new turns are written (the last reply's 5 words, the question's 2); nothing is left uncached.
    assert two.cache_write_tokens == 5 + 2
    assert two.input_tokens == two.cached_input_tokens + two.cache_write_tokens
    fresh = two.input_tokens - two.cached_input_tokens - two.cache_write_tokens
    expected = (
        fresh * Decimal("2.5")
        + two.cached_input_tokens * Decimal("1.25")
        + two.cache_write_tokens * Decimal("3.125")
        + two.output_tokens * Decimal(10)
    ) / 1_000_000
    assert two.cost == expected.quantize(Decimal("0.00000001"))
    assert second["usage"]["cached_input_tokens"] == two.cached_input_tokens


def test_a_model_not_in_the_registry_still_works_and_costs_nothing(alice, fake_provider):
    from conversations import pricing
    from conversations.llm import Usage

    assert pricing.cost_of("openai:gpt-unlisted", Usage(1000, 1000, 10, 0)) == 0
    assert pricing.may_use(alice.pk, "openai:gpt-unlisted") and not pricing.may_use(
        alice.pk, "openai:gpt-unlisted", listed_only=True
    )


def test_summary_and_title_calls_are_recorded_charged_and_count_against_the_quota(alice, fake_provider, settings):
    registry("openai:gpt-test")
    persona = make_persona("tiny", context_budget_tokens=300, system_prompt="Be brief.")
    conv = make_conversation(alice, persona)
    make_turns(conv, 12, words=12)
    cache.clear()
    before = limits.tokens_used_today(alice.pk)
    fake_provider.script(Reply(text="A short title", input_tokens=40, output_tokens=3))
    assert summaries.write_title(conv.pk) == "A short title"
    fake_provider.script(Reply(text="The summary.", input_tokens=300, output_tokens=20))
    assert summaries.summarize(conv.pk)
    records = {r.kind: r for r in UsageRecord.objects.filter(user=alice)}
    assert set(records) == {"title", "summary"}
    assert (records["title"].input_tokens, records["title"].output_tokens) == (40, 3)
    assert (records["summary"].input_tokens, records["summary"].output_tokens) == (300, 20)
    assert records["summary"].cost == Decimal("0.00095000")  # 300 x 2.5 + 20 x 10, per million
    assert records["summary"].conversation_id == conv.pk and records["summary"].persona_id == persona.pk
    # The live counter and the one rebuilt from the database agree.
    assert limits.tokens_used_today(alice.pk) == before + 40 + 3 + 300 + 20
    cache.clear()
    assert limits.tokens_used_today(alice.pk) == before + 40 + 3 + 300 + 20
    settings.CHAT_DAILY_TOKEN_QUOTA = before + 300
    assert limits.check_quota(alice.pk) is not None


# -- prompt caching: the prefix holds until a summary lands ---------------------------------------------------------
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_the_request_prefix_is_byte_identical_until_a_summary_lands(alice, fake_provider, settings, provider):
    settings.CHAT_DEFAULT_MODEL = f"{provider}:model-x"
    path = "/v1/messages" if provider == "anthropic" else "/v1/chat/completions"
    persona = await sync_to_async(make_persona)("tiny", context_budget_tokens=300, system_prompt="Be brief.")
    conv = await sync_to_async(make_conversation)(alice, persona, title_is_auto=False, title="T")
    ws = await opened(alice, conv)
    # Turns until a summary is due (the worker would write it now).
    for i in range(20):
        fake_provider.script(Reply(text=f"Answer {i}: " + "a short and plain answer " * 4))
        question = f"Question {i}: tell me more about item number {i} and why it matters to the whole project here."
        assert (await send(ws, question))["status"] == "complete"
        conv = await sync_to_async(Conversation.objects.select_related("persona").get)(pk=conv.pk)
        if await sync_to_async(summaries.needs_summary)(conv):
            break
    assert i >= 3
    before = [_prefix_view(b, provider) for b in chat_bodies(fake_provider, path)]
    for earlier, later in zip(before, before[1:], strict=False):
        assert later["head"] == earlier["head"]
        assert later["turns"][: len(earlier["turns"])] == earlier["turns"]  # byte for byte
        assert len(later["turns"]) == len(earlier["turns"]) + 2
    # A summary lands: the head changes once, then holds again.
    fake_provider.script(Reply(text="SUMMARY of the early questions."))
    assert await sync_to_async(summaries.summarize)(conv.pk)
    for i in (6, 7):
        fake_provider.script(Reply(text=f"Answer {i}."))
        assert (await send(ws, f"Question {i}."))["status"] == "complete"
    await ws.close()
    after = [_prefix_view(b, provider) for b in chat_bodies(fake_provider, path)][-2:]
    assert after[0]["head"] != before[-1]["head"] and "SUMMARY of the early" in after[0]["head"]
    assert after[1]["head"] == after[0]["head"]
    assert after[1]["turns"][: len(after[0]["turns"])] == after[0]["turns"]


def _prefix_view(body: dict, provider: str) -> dict:
    """The request as the cache sees it: its head (system prompt + summary) and its turns as JSON text.

    Anthropic's breakpoint marks the newest turn of each request, so it moves: the turns are compared
    without the marker (the cache keys on content), and the marker must be on the last turn only.
    """
    if provider == "openai":
        messages = body["messages"]
        assert messages[0]["role"] == "system"
        return {"head": messages[0]["content"], "turns": [json.dumps(m) for m in messages[1:]]}
    marked = [i for i, m in enumerate(body["messages"]) if not isinstance(m["content"], str)]
    assert marked == [len(body["messages"]) - 1]
    turns = [json.dumps({"role": m["role"], "content": _text(m["content"])}) for m in body["messages"]]
    return {"head": body["system"], "turns": turns}
