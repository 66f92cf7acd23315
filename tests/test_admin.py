"""The admin: personas curated and previewed by staff, usage per persona, threads read-only; who may use a persona."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from conversations.models import Conversation, ConversationRead, Message, Persona
from tests.conftest import open_socket
from tests.factories import add_message, default_persona, make_conversation, make_persona, make_turns, make_user
from tests.fakes.provider import Reply

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def persona_form(persona: Persona, **changes) -> dict:
    data = {
        "name": persona.name,
        "slug": persona.slug,
        "description": persona.description,
        "system_prompt": persona.system_prompt,
        "model": persona.model,
        "temperature": "" if persona.temperature is None else persona.temperature,
        "max_output_tokens": persona.max_output_tokens or "",
        "context_budget_tokens": persona.context_budget_tokens or "",
        "is_active": "on" if persona.is_active else "",
        "is_default": "on" if persona.is_default else "",
        "groups": [g.pk for g in persona.groups.all()],
        "position": persona.position,
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v != ""}


def change_url(persona: Persona) -> str:
    return reverse("admin:conversations_persona_change", args=[persona.pk])


def errors_of(response) -> dict:
    return response.context["adminform"].form.errors


# -- who gets in ------------------------------------------------------------------------------
def test_it_keeps_non_staff_out_of_the_admin(alice):
    client = client_for(alice)
    for url in ["/admin/", "/admin/conversations/conversation/", "/admin/conversations/persona/"]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url


def test_staff_alone_cannot_read_other_peoples_threads(alice):
    moderator = make_user("dave", is_staff=True)  # staff, no permission to read threads
    conv = make_conversation(alice, title="Alice's private thread")
    Message.objects.create(conversation=conv, role="user", content="a private message")
    client = client_for(moderator)
    index = client.get("/admin/").content.decode()
    assert "/admin/conversations/conversation/" not in index
    for url in [
        reverse("admin:conversations_conversation_changelist"),
        reverse("admin:conversations_conversation_change", args=[conv.pk]),
        reverse("admin:conversations_conversationread_changelist"),
    ]:
        response = client.get(url)
        assert response.status_code == 403, url
        assert b"private" not in response.content
    assert not ConversationRead.objects.exists()


def test_staff_with_the_permission_read_threads_change_nothing_and_each_read_is_recorded(alice, caplog):
    moderator = make_user("dave", is_staff=True)
    moderator.user_permissions.add(Permission.objects.get(codename="read_others_conversations"))
    conv = make_conversation(alice, title="Alice's private thread")
    add_message(conv, role="user", content="<b>a message to moderate</b>")
    client = client_for(moderator)
    listing = client.get(reverse("admin:conversations_conversation_changelist"))
    assert listing.status_code == 200 and "Alice&#x27;s private thread" in listing.content.decode()
    url = reverse("admin:conversations_conversation_change", args=[conv.pk])
    with caplog.at_level(logging.INFO, logger="conversations.audit"):
        page = client.get(url)
    assert page.status_code == 200
    assert "&lt;b&gt;a message to moderate&lt;/b&gt;" in page.content.decode()
    assert f"dave read alice's conversation {conv.pk} in the admin" in caplog.text
    read = ConversationRead.objects.get()
    assert (read.reader, read.owner, read.conversation, read.reader_name, read.owner_name) == (
        moderator,
        alice,
        conv,
        "dave",
        "alice",
    )
    # The trail is in the admin, read-only, and outlives the thread.
    trail = client.get(reverse("admin:conversations_conversationread_changelist"))
    assert trail.status_code == 200 and str(conv.pk) in trail.content.decode()
    assert client.post(url, {"title": "renamed"}).status_code == 403
    assert client.post(reverse("admin:conversations_conversation_delete", args=[conv.pk])).status_code == 403
    assert client.get(reverse("admin:conversations_conversation_add")).status_code == 403
    conv.refresh_from_db()
    assert conv.title == "Alice's private thread" and conv.messages.count() == 1
    conv.delete()
    assert ConversationRead.objects.get().conversation_ref == read.conversation_ref
    # Personas are curated by staff with permissions only.
    assert client.get(reverse("admin:conversations_persona_changelist")).status_code == 403


def test_superusers_read_threads_and_their_reads_are_recorded_too(alice, charlie):
    conv = make_conversation(alice, title="Alice's private thread")
    own = make_conversation(charlie, title="Charlie's own")
    client = client_for(charlie)
    assert client.get(reverse("admin:conversations_conversation_change", args=[conv.pk])).status_code == 200
    assert client.get(reverse("admin:conversations_conversation_change", args=[own.pk])).status_code == 200
    assert list(ConversationRead.objects.values_list("conversation_ref", flat=True)) == [conv.pk]  # not their own


# -- usage per persona ------------------------------------------------------------------------
def add_usage(persona: Persona, owner, *, threads: int, days_ago: int = 0) -> None:
    for _ in range(threads):
        conv = make_conversation(owner, persona)
        add_message(conv, role="user", content="q")
        add_message(conv, role="assistant", content="a", input_tokens=100, output_tokens=10)
        if days_ago:
            conv.messages.update(created_at=timezone.now() - dt.timedelta(days=days_ago))


def changelist_rows(client) -> dict[str, Persona]:
    response = client.get(reverse("admin:conversations_persona_changelist"))
    assert response.status_code == 200
    return {p.slug: p for p in response.context["cl"].result_list}


def test_it_shows_threads_messages_and_tokens_of_the_last_30_days_per_persona(alice, bob, charlie):
    coder = make_persona("coder")
    add_usage(coder, alice, threads=2)
    add_usage(coder, bob, threads=1)
    add_usage(coder, bob, threads=4, days_ago=31)  # too old to count
    add_usage(default_persona(), alice, threads=1)
    rows = changelist_rows(client_for(charlie))
    c = rows["coder"]
    assert (c.threads_30d, c.messages_30d, c.tokens_in_30d, c.tokens_out_30d) == (3, 6, 300, 30)
    d = rows["assistant"]
    assert (d.threads_30d, d.messages_30d, d.tokens_in_30d, d.tokens_out_30d) == (1, 2, 100, 10)
    page = client_for(charlie).get(reverse("admin:conversations_persona_changelist")).content.decode()
    assert "Tokens in (30d)" in page and "Everyone" in page


def test_it_lists_personas_in_a_constant_number_of_queries(alice, charlie):
    client = client_for(charlie)
    group = Group.objects.create(name="staffers")
    add_usage(make_persona("p0"), alice, threads=1)
    client.get(reverse("admin:conversations_persona_changelist"))  # warm caches (content types, session)
    with CaptureQueriesContext(connection) as few:
        changelist_rows(client)
    for i in range(1, 8):
        persona = make_persona(f"p{i}")
        persona.groups.add(group)
        add_usage(persona, alice, threads=2)
    with CaptureQueriesContext(connection) as many:
        rows = changelist_rows(client)
    assert len(rows) == 9
    assert len(many) == len(few), [q["sql"] for q in many.captured_queries]


# -- exactly one default ------------------------------------------------------------------------
def test_it_moves_the_default_to_the_persona_made_default(charlie):
    old = default_persona()
    new = make_persona("coder")
    response = client_for(charlie).post(change_url(new), persona_form(new, is_default="on"))
    assert response.status_code == 302, errors_of(response)
    assert list(Persona.objects.filter(is_default=True)) == [new]
    old.refresh_from_db()
    assert not old.is_default and old.is_active


def test_it_refuses_to_leave_the_site_without_a_default(charlie):
    persona = default_persona()
    response = client_for(charlie).post(change_url(persona), persona_form(persona, is_default=""))
    assert response.status_code == 200
    assert "exactly one default persona" in str(errors_of(response)["is_default"])
    assert Persona.objects.filter(is_default=True).count() == 1


def test_it_keeps_the_default_active_and_open_to_everyone(charlie):
    persona = default_persona()
    group = Group.objects.create(name="staffers")
    client = client_for(charlie)
    response = client.post(change_url(persona), persona_form(persona, is_active=""))
    assert "must be active" in str(errors_of(response)["is_active"])
    response = client.post(change_url(persona), persona_form(persona, groups=[group.pk]))
    assert "for everyone" in str(errors_of(response)["groups"])
    persona.refresh_from_db()
    assert persona.is_active and not persona.groups.exists()


def test_it_keeps_the_default_from_being_retired_or_deleted_from_the_list(charlie):
    default = default_persona()
    other = make_persona("coder", position=1)
    client = client_for(charlie)
    url = reverse("admin:conversations_persona_changelist")
    rows = [default, other]  # ordered by position, name
    form = {"form-TOTAL_FORMS": "2", "form-INITIAL_FORMS": "2", "_save": "Save"}
    for i, p in enumerate(rows):
        form[f"form-{i}-id"] = p.pk
        form[f"form-{i}-position"] = p.position
    response = client.post(url, form)  # both unticked: retire both
    assert response.status_code == 200 and "cannot be retired" in response.content.decode()
    assert Persona.objects.get(pk=default.pk).is_active
    response = client.post(url, {"action": "retire", "_selected_action": [default.pk, other.pk]})
    assert response.status_code == 302
    assert Persona.objects.get(pk=default.pk).is_active and not Persona.objects.get(pk=other.pk).is_active
    assert client.post(reverse("admin:conversations_persona_delete", args=[default.pk])).status_code == 403
    assert "delete_selected" not in client.get(url).content.decode()


def test_it_validates_the_model_against_the_configured_providers(charlie, settings):
    settings.OPENAI_API_KEY = settings.OPENAI_BASE_URL = ""
    settings.ANTHROPIC_API_KEY = settings.ANTHROPIC_BASE_URL = ""
    persona = make_persona("coder")
    client = client_for(charlie)
    response = client.post(change_url(persona), persona_form(persona, model="anthropic:claude-haiku-4-5"))
    message = str(errors_of(response)["model"])
    assert "anthropic provider is not configured" in message and "configured: offline" in message
    response = client.post(change_url(persona), persona_form(persona, model="gpt-4o"))
    assert "provider:model" in str(errors_of(response)["model"])
    settings.ANTHROPIC_API_KEY = "sk-ant-test"
    response = client.post(change_url(persona), persona_form(persona, model="anthropic:claude-haiku-4-5"))
    assert response.status_code == 302
    persona.refresh_from_db()
    assert persona.model == "anthropic:claude-haiku-4-5"


# -- preview ------------------------------------------------------------------------------------
def preview_url(persona: Persona) -> str:
    return reverse("admin:conversations_persona_preview", args=[persona.pk])


def test_it_previews_a_persona_against_the_provider_without_creating_a_thread(charlie, fake_provider):
    persona = make_persona("pirate", system_prompt="Talk like a pirate.", model="openai:gpt-pirate", temperature=0.3)
    fake_provider.script(Reply(text="Arr, **matey**!", input_tokens=12, output_tokens=4))
    client = client_for(charlie)
    assert (
        f'href="/admin/conversations/persona/{persona.pk}/preview/"' in client.get(change_url(persona)).content.decode()
    )
    response = client.post(preview_url(persona), {"message": "Hello there"})
    page = response.content.decode()
    assert response.status_code == 200
    assert "Arr, <strong>matey</strong>!" in page and "12 tokens in, 4 out" in page
    body = fake_provider.requests[-1].json
    assert body["model"] == "gpt-pirate" and body["temperature"] == 0.3
    assert body["messages"] == [
        {"role": "system", "content": "Talk like a pirate."},
        {"role": "user", "content": "Hello there"},
    ]
    assert not Conversation.objects.exists() and not Message.objects.exists()


def test_it_shows_a_provider_error_in_the_preview(charlie, fake_provider):
    persona = make_persona("pirate", model="openai:gpt-pirate")
    fake_provider.script(Reply(status=401))
    response = client_for(charlie).post(preview_url(persona), {"message": "Hello"})
    assert response.status_code == 200
    assert "The preview failed: The provider rejected the API key." in response.content.decode()


@pytest.mark.django_db(transaction=True)
async def test_it_streams_the_preview_into_the_page(charlie, fake_provider):
    persona = await sync_to_async(make_persona)("pirate", system_prompt="Talk like a pirate.", model="openai:gpt-p")
    words = ["Arr", " <script>", " ye", " scallywag", " & co."]
    # Chunks 30 ms apart leave as they come (chunks read together leave joined: test_openai_adapter.py).
    fake_provider.script(Reply(chunks=words, input_tokens=9, output_tokens=5, token_delay=0.03))
    client = AsyncClient()
    await client.aforce_login(charlie)
    response = await client.post(preview_url(persona), {"message": "Hello", "stream": "on"})
    assert response.status_code == 200 and response.streaming
    parts = [part.decode() if isinstance(part, bytes) else part async for part in response.streaming_content]
    page = "".join(parts)
    assert len(parts) >= 4  # the page head, the chunks as they came (not in one block), the end
    assert '<pre class="preview-stream">Arr &lt;script&gt; ye scallywag &amp; co.</pre>' in page
    assert "9 tokens in, 5 out" in page and page.rstrip().endswith("</html>")
    assert fake_provider.requests[-1].json["stream"] is True
    assert not await Message.objects.aexists()


def test_it_previews_only_for_staff_who_may_change_personas(alice, fake_provider):
    persona = make_persona("pirate")
    response = client_for(alice).post(preview_url(persona), {"message": "Hello"})
    assert response.status_code == 302 and fake_provider.requests == []
    moderator = make_user("dave", is_staff=True)
    assert client_for(moderator).post(preview_url(persona), {"message": "Hello"}).status_code == 403


# -- who may use a persona ------------------------------------------------------------------------
def test_it_hides_group_restricted_personas_from_everyone_else(alice, bob):
    default_persona()
    group = Group.objects.create(name="beta")
    secret = make_persona("secret", name="Secret agent")
    secret.groups.add(group)
    bob.groups.add(group)
    page = client_for(alice).get(reverse("conversation_new")).content.decode()
    assert "Secret agent" not in page and 'value="secret"' not in page
    assert 'value="secret"' in client_for(bob).get(reverse("conversation_new")).content.decode()
    assert client_for(alice).post(reverse("conversation_new"), {"persona": "secret"}).status_code == 404
    response = client_for(bob).post(reverse("conversation_new"), {"persona": "secret"})
    assert response.status_code == 302
    assert Conversation.objects.get(owner=bob).persona == secret
    assert not Conversation.objects.filter(owner=alice).exists()


@pytest.mark.django_db(transaction=True)
async def test_it_refuses_messages_to_a_persona_the_user_may_no_longer_use(alice, bob):
    def setup():
        group = Group.objects.create(name="beta")
        persona = make_persona("secret", name="Secret agent")
        bob.groups.add(group)
        convs = make_conversation(alice, persona), make_conversation(bob, persona)
        make_turns(convs[0], 2)
        persona.groups.add(group)  # restricted after the threads were started
        return convs

    alice_conv, bob_conv = await sync_to_async(setup)()
    ok, ws = await open_socket(alice, alice_conv.pk)
    await ws.recv()
    await ws.send_message("still there?")
    error = await ws.until("error")
    assert error["code"] == "not_found" and "no longer available" in error["message"]
    await ws.send({"type": "regenerate"})
    assert (await ws.until("error"))["code"] == "not_found"
    assert await Message.objects.filter(conversation=alice_conv).acount() == 2  # nothing stored
    await ws.close()

    ok, ws = await open_socket(bob, bob_conv.pk)
    await ws.recv()
    await ws.send_message("still there?")
    assert (await ws.until("end"))["status"] == "complete"
    await ws.close()


@pytest.mark.django_db(transaction=True)
async def test_it_continues_a_retired_personas_thread_with_the_default_and_says_so(alice, fake_provider):
    def setup():
        default = default_persona()
        default.model = "openai:gpt-default"
        default.save()
        old = make_persona("old", name="Old Timer", model="openai:gpt-old")
        conv = make_conversation(alice, old)
        make_turns(conv, 2)
        Persona.objects.filter(pk=old.pk).update(is_active=False)
        return conv

    conv = await sync_to_async(setup)()
    page = (await sync_to_async(lambda: client_for(alice).get(conv.get_absolute_url()))()).content.decode()
    assert "Old Timer has been retired: this chat continues with Assistant." in page
    assert "user0w0" in page  # still readable
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("and now?")
    start = await ws.until("start")
    assert start["model"] == "openai:gpt-default"
    assert (await ws.until("end"))["status"] == "complete"
    assert fake_provider.requests[-1].json["model"] == "gpt-default"
    await ws.close()
