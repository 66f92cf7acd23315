"""The OpenAI-compatible API, driven by the real `openai` SDK against a live daphne process.

The site's own upstream is the fake provider server; the SDK is the client of the site.
"""

from __future__ import annotations

import random
from decimal import Decimal

import httpx
import openai
import pytest
from django.contrib.auth.models import Group
from django.test import Client

from api import keys
from api.models import ApiKey
from conversations.models import ChatModel, Conversation, Message, UsageRecord, UserQuota
from tests.factories import default_persona, make_persona, make_user
from tests.fakes.provider import Reply

pytestmark = pytest.mark.slow


def user(name: str):
    # An id no other run uses: rate and quota counters may live in a Redis other test runs share.
    return make_user(name, id=random.randint(10**6, 10**9))


@pytest.fixture
def site(fake_provider, live_server_factory):
    def start(**env: str):
        base = {
            "OPENAI_API_KEY": "x",
            "OPENAI_BASE_URL": fake_provider.openai_base_url,
            "CHAT_DEFAULT_MODEL": "openai:gpt-test",
            "CHAT_RATE_LIMIT": "1000/m",
        }
        return live_server_factory(**{**base, **env})

    return start


def client_for(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{server.url}/v1", max_retries=0, timeout=20)


@pytest.fixture
def alice_key():
    alice = user("alice")
    default_persona()
    _, key = keys.api_key_create(user=alice, name="laptop")
    return alice, key


def test_it_lists_the_personas_the_user_may_use(site, alice_key):
    alice, key = alice_key
    staff_only = make_persona("auditor")
    staff_only.groups.add(Group.objects.create(name="auditors"))
    make_persona("coder")
    server = site()
    ids = [m.id for m in client_for(server, key).models.list()]
    assert ids == ["assistant", "coder"]  # picker order; the group-restricted persona is not hers
    alice.groups.add(Group.objects.get(name="auditors"))
    ids = [m.id for m in client_for(server, key).models.list()]
    assert "auditor" in ids
    assert client_for(server, key).models.retrieve("coder").id == "coder"
    assert ApiKey.objects.get(user=alice).last_used_at is not None


def test_it_streams_a_completion_with_usage_and_the_persona_prompt_first(site, fake_provider, alice_key):
    alice, key = alice_key
    make_persona("coder", system_prompt="You are a terse coder.")
    # Words 30 ms apart: they leave as they come (events the site reads together leave joined).
    fake_provider.script(Reply(text="Use a list comprehension.", input_tokens=17, output_tokens=5, token_delay=0.03))
    server = site()
    stream = client_for(server, key).chat.completions.create(
        model="coder",
        messages=[{"role": "system", "content": "Answer in English."}, {"role": "user", "content": "How to map?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Use a list comprehension."
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed, not in one block
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 17 and chunks[-1].usage.completion_tokens == 5
    sent = fake_provider.requests[-1].json
    assert sent["messages"][0] == {"role": "system", "content": "You are a terse coder.\n\nAnswer in English."}
    assert sent["messages"][1:] == [{"role": "user", "content": "How to map?"}]
    # Stateless by default: no thread was stored.
    assert not Conversation.objects.filter(owner=alice).exists()


def test_it_answers_a_non_streamed_completion(site, fake_provider, alice_key):
    _, key = alice_key
    fake_provider.script(Reply(text="Hello there.", input_tokens=3, output_tokens=2))
    completion = client_for(site(), key).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hello there."
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        3,
        2,
        5,
    )


def test_the_conversation_extension_stores_the_exchange_as_a_thread(site, fake_provider, alice_key):
    alice, key = alice_key
    fake_provider.script(Reply(text="First answer."), Reply(text="Second answer."))
    client = client_for(site(), key)
    first = client.chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "Remember this"}], extra_body={"conversation": True}
    )
    conversation_id = first.model_extra["conversation"]
    conv = Conversation.objects.get(pk=conversation_id)
    assert conv.owner == alice and conv.title == "Remember this"
    second = client.chat.completions.create(
        model="assistant",
        messages=[
            {"role": "user", "content": "Remember this"},
            {"role": "assistant", "content": "First answer."},
            {"role": "user", "content": "And this"},
        ],
        stream=True,
        extra_body={"conversation": conversation_id},
    )
    assert "".join(c.choices[0].delta.content or "" for c in second if c.choices) == "Second answer."
    conv.refresh_from_db()
    path = []  # the active path, leaf to root: what the page shows
    node = Message.objects.get(pk=conv.active_leaf_id)
    while node is not None:
        path.append(node)
        node = node.parent
    rows = [(m.role, m.content, m.status) for m in reversed(path)]
    assert rows == [
        ("user", "Remember this", "complete"),
        ("assistant", "First answer.", "complete"),
        ("user", "And this", "complete"),
        ("assistant", "Second answer.", "complete"),
    ]
    # She can open it on the site.
    browser = Client()
    browser.force_login(alice)
    page = browser.get(conv.get_absolute_url()).content.decode()
    assert "And this" in page and "Second answer." in page
    # Someone else's thread is not there for her key.
    bobs = Conversation.objects.create(owner=user("bob"), persona=default_persona())
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "x"}], extra_body={"conversation": str(bobs.pk)}
        )
    assert not bobs.messages.exists()


def test_a_revoked_key_another_header_or_a_session_is_401(site, alice_key, client):
    alice, key = alice_key
    server = site()
    keys.api_key_revoke(key=ApiKey.objects.get(user=alice))
    with pytest.raises(openai.AuthenticationError) as caught:
        client_for(server, key).models.list()
    assert caught.value.code == "invalid_api_key"
    assert caught.value.status_code == 401
    # The key in another header, a made-up key, and a signed-in session: all 401.
    _, live = keys.api_key_create(user=alice, name="second")
    client.force_login(alice)
    session = client.cookies["sessionid"].value
    attempts = [
        {"X-Api-Key": live},
        {"Authorization": f"Token {live}"},
        {"Authorization": "Bearer csk-" + "x" * 43},
        {"Cookie": f"sessionid={session}"},
    ]
    for headers in attempts:
        response = httpx.get(f"{server.url}/v1/models", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "invalid_api_key"
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"Cookie": f"sessionid={session}"},
        json={"model": "assistant", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 401
    # And the key opens no web page.
    page = httpx.get(f"{server.url}/", headers={"Authorization": f"Bearer {live}"})
    assert page.status_code == 302 and page.headers["location"].startswith("/accounts/login/")
    assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {live}"}).status_code == 200


def test_another_groups_persona_is_model_not_found(site, alice_key):
    _, key = alice_key
    bob = user("bob")
    secret = make_persona("legal")
    secret.groups.add(group := Group.objects.create(name="legal"))
    bob.groups.add(group)
    with pytest.raises(openai.NotFoundError) as caught:
        client_for(site(), key).chat.completions.create(model="legal", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client_for(site(), key).chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


def test_quota_exceeded_is_429_insufficient_quota(site, fake_provider, alice_key):
    alice, key = alice_key
    UserQuota.objects.create(user=alice, daily_token_quota=10)
    fake_provider.script(Reply(text="spent", input_tokens=8, output_tokens=4))
    client = client_for(site(), key)
    client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "again"}])
    assert caught.value.code == "insufficient_quota"
    assert len(fake_provider.requests) == 1  # refused before the provider was asked


def test_the_rate_limit_is_429_rate_limit_exceeded(site, fake_provider, alice_key):
    _, key = alice_key
    client = client_for(site(CHAT_RATE_LIMIT="2/h"), key)
    for _ in range(2):
        client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert len(fake_provider.requests) == 2


def test_bad_requests_are_400_invalid_request_error(site, alice_key):
    _, key = alice_key
    server = site()
    auth = {"Authorization": f"Bearer {key}"}
    bodies = [
        b"not json",
        b"[]",
        b'{"model": "assistant"}',
        b'{"model": "assistant", "messages": []}',
        b'{"model": "assistant", "messages": [{"role": "tool", "content": "x"}]}',
        b'{"model": "assistant", "messages": [{"role": "user", "content": 5}]}',
        b'{"model": "assistant", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
        b'{"model": "assistant", "messages": [{"role": "user", "content": "x"}], "conversation": "nope"}',
        b'{"messages": [{"role": "user", "content": "x"}]}',
    ]
    for body in bodies:
        response = httpx.post(f"{server.url}/v1/chat/completions", headers=auth, content=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error", body
    # No CORS: a browser on another origin gets no permission to read the answer.
    response = httpx.options(
        f"{server.url}/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in response.headers


def test_a_provider_failure_mid_stream_is_an_error_event_and_is_counted(site, fake_provider, alice_key):
    alice, key = alice_key
    fake_provider.script(Reply(text="one two three four five", stream_error_after=2))
    stream = client_for(site(), key).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "hi"}], stream=True, extra_body={"conversation": True}
    )
    seen = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            if chunk.choices:
                seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "one two"
    reply = Message.objects.get(conversation__owner=alice, role="assistant")
    assert (reply.status, reply.content) == ("error", "one two")


def test_registry_models_are_listed_and_usable_by_name_and_usage_is_recorded_and_priced(site, fake_provider, alice_key):
    alice, key = alice_key
    ChatModel.objects.create(name="openai:gpt-test", input_price=Decimal(2), output_price=Decimal(10))
    hidden = ChatModel.objects.create(name="openai:gpt-secret")
    hidden.groups.add(Group.objects.create(name="insiders"))
    fake_provider.script(Reply(text="Raw model.", input_tokens=1000, output_tokens=100))
    client = client_for(site(), key)
    ids = [m.id for m in client.models.list()]
    assert ids == ["assistant", "openai:gpt-test"]
    completion = client.chat.completions.create(
        model="openai:gpt-test", messages=[{"role": "user", "content": "no persona here"}]
    )
    assert completion.choices[0].message.content == "Raw model."
    sent = fake_provider.requests[-1].json
    assert sent["model"] == "gpt-test"
    assert sent["messages"] == [{"role": "user", "content": "no persona here"}]  # no persona's prompt
    record = UsageRecord.objects.get(user=alice)
    assert (record.model, record.kind, record.input_tokens, record.output_tokens) == (
        "openai:gpt-test",
        "reply",
        1000,
        100,
    )
    assert record.conversation is None and record.persona is None and not record.estimated
    assert record.cost == Decimal("0.003")  # 1000 x $2/M + 100 x $10/M
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="openai:gpt-secret", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):  # a model outside the registry is only a persona's
        client.chat.completions.create(model="openai:gpt-other", messages=[{"role": "user", "content": "hi"}])


def test_stateless_usage_counts_against_the_quota_after_the_cache_is_lost(site, fake_provider, alice_key):
    """The day's counter is rebuilt from stored usage: a stateless API call is in it too."""
    from conversations import limits

    alice, key = alice_key
    fake_provider.script(Reply(text="x", input_tokens=40, output_tokens=2))
    client_for(site(), key).chat.completions.create(model="assistant", messages=[{"role": "user", "content": "hi"}])
    assert UsageRecord.objects.get(user=alice).persona.slug == "assistant"
    assert limits.tokens_used_today(alice.pk) == 42  # this process's cache never saw it: rebuilt from rows


def test_a_provider_failure_before_any_text_is_an_http_error_and_costs_nothing(site, fake_provider, alice_key):
    alice, key = alice_key
    make_persona("broken", model="nowhere:model")
    fake_provider.script(Reply(status=401, error_type="authentication_error"))
    client = client_for(site(), key)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert caught.value.status_code == 502 and caught.value.code == "provider_auth"
    with pytest.raises(openai.APIStatusError) as caught:  # a persona staff misconfigured: an error, not a 500
        client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    record = UsageRecord.objects.get(user=alice)
    assert (record.input_tokens, record.output_tokens) == (0, 0)
