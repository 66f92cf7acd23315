"""The chat pages over HTTP: who sees what, the server-rendered history, the htmx partials, and a
conversation page whose query count does not grow with its length."""

from __future__ import annotations

import json
import time

import pytest
from django.db import connection
from django.template.base import Template
from django.test import utils as test_utils
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from conversations import rendering, services
from conversations.models import Conversation, Message
from tests.factories import (
    add_message,
    default_persona,
    link_path,
    make_conversation,
    make_persona,
    make_turns,
    make_user,
)

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def as_alice(client, alice):
    client.force_login(alice)
    return client


def thread(owner, n=2, **fields):
    conversation = make_conversation(owner, **fields)
    make_turns(conversation, n)
    return conversation


def test_it_sends_anonymous_people_to_log_in(client, alice):
    conversation = thread(alice)
    for url in ["/", "/conversations/new/", conversation.get_absolute_url(), reverse("sidebar")]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url


def test_it_shows_the_persona_picker_when_there_is_no_thread_yet(as_alice):
    default_persona()
    make_persona("coder", name="Coder", description="Writes code.", model="openai:gpt-4o-mini")
    make_persona("gone", name="Retired one", is_active=False)
    response = as_alice.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="persona" value="assistant" checked' in html
    assert "Writes code." in html and "gpt-4o-mini (OpenAI)" in html
    assert "Retired one" not in html
    assert 'action="/conversations/new/"' in html


def test_it_opens_the_latest_thread_pinned_or_not(as_alice, alice):
    older = thread(alice, pinned=True)
    newer = thread(alice)
    Conversation.objects.filter(pk=older.pk).update(updated_at=newer.updated_at.replace(year=2000))
    make_conversation(alice)  # empty: not a thread to return to
    response = as_alice.get("/")
    assert response.status_code == 302 and response["Location"] == newer.get_absolute_url()


def test_it_creates_a_conversation_with_the_chosen_persona(as_alice, alice):
    default_persona()
    coder = make_persona("coder")
    response = as_alice.post("/conversations/new/", {"persona": "coder"})
    conversation = Conversation.objects.get(owner=alice)
    assert response.status_code == 302 and response["Location"] == conversation.get_absolute_url()
    assert conversation.persona == coder
    assert as_alice.post("/conversations/new/", {"persona": "nope"}).status_code == 404


def test_new_chat_cannot_pile_up_empty_conversations(as_alice, alice):
    """Beyond MAX_EMPTY_CONVERSATIONS empty ones, "new chat" reuses the oldest (with the new persona)."""
    default_persona()
    coder = make_persona("coder")
    limit = services.MAX_EMPTY_CONVERSATIONS
    made = [as_alice.post("/conversations/new/")["Location"] for _ in range(limit)]
    assert len(set(made)) == limit
    again = as_alice.post("/conversations/new/", {"persona": "coder"})
    assert again.status_code == 302 and again["Location"] == made[0]
    assert Conversation.objects.filter(owner=alice).count() == limit
    assert Conversation.objects.get(pk=made[0].split("/")[-2]).persona == coder
    # A conversation with a message is no longer empty: the next new chat is a new row again.
    Message.objects.create(conversation_id=made[0].split("/")[-2], role="user", content="hi")
    fresh = as_alice.post("/conversations/new/")["Location"]
    assert fresh not in made and Conversation.objects.filter(owner=alice).count() == limit + 1


def test_it_renders_the_history_on_the_server(as_alice, alice):
    coder = make_persona("coder", name="Coder", model="anthropic:claude-test")
    conversation = make_conversation(alice, persona=coder, title="Parsing")
    add_message(conversation, role="user", content="<b>not bold</b>\n*not em*")
    add_message(conversation, role="assistant", content="**bold** <script>x()</script>")
    html = as_alice.get(conversation.get_absolute_url()).content.decode()
    assert "&lt;b&gt;not bold&lt;/b&gt;\n*not em*" in html  # the user's text, exactly as typed
    assert "<strong>bold</strong> &lt;script&gt;x()&lt;/script&gt;" in html
    assert "<script>x()" not in html
    assert 'class="persona-name">Coder<' in html and "claude-test (Anthropic)" in html
    assert 'id="offline-banner" role="note" hidden' in html


def test_it_shows_the_offline_banner_only_when_the_demo_model_answers(as_alice, alice):
    demo = make_persona("demo", model="offline:demo")
    offline = thread(alice, persona=demo)
    online = thread(alice, persona=make_persona("real", model="openai:gpt-4o-mini"))
    assert 'id="offline-banner" role="note">' in as_alice.get(offline.get_absolute_url()).content.decode()
    assert 'id="offline-banner" role="note" hidden' in as_alice.get(online.get_absolute_url()).content.decode()


def banner_of(html: str) -> str:
    start = html.index('id="offline-banner"')
    return html[start : html.index("</p>", start)]


def test_it_tells_only_staff_how_to_set_an_api_key(client, alice):
    demo = make_persona("demo", model="offline:demo")
    staff = make_user("sam", is_staff=True)
    for user in (alice, staff):
        conversation = thread(user, persona=demo)
        client.force_login(user)
        banner = banner_of(client.get(conversation.get_absolute_url()).content.decode())
        assert "demo text" in banner
        if user.is_staff:
            assert "OPENAI_API_KEY" in banner and ".env" in banner
        else:
            assert "OPENAI_API_KEY" not in banner and ".env" not in banner
            assert "An admin of this site can connect a real model." in banner


def test_it_marks_failed_and_stopped_replies_with_what_to_do_next(as_alice, alice):
    conversation = make_conversation(alice)
    add_message(conversation, role="user", content="q")
    add_message(conversation, role="assistant", content="partial", status="stopped")
    add_message(conversation, role="user", content="q2")
    Message.objects.create(
        conversation=conversation, role="assistant", content="", status="error", error_code="provider_auth"
    )
    html = as_alice.get(conversation.get_absolute_url()).content.decode()
    assert "Stopped." in html
    assert "The provider rejected the key: ask your admin" in html


def test_it_answers_404_for_another_users_conversation_everywhere(client, alice, bob):
    conversation = thread(alice)
    reply = conversation.messages.filter(role="assistant").first()
    client.force_login(bob)
    pk = conversation.pk
    gets = [
        f"/conversations/{pk}/",
        f"/conversations/{pk}/item/",
        f"/conversations/{pk}/rename/",
        f"/conversations/{pk}/delete/",
        f"/conversations/{pk}/messages/{reply.pk}/",
        f"/conversations/{pk}/messages/{reply.pk}/?format=text",
    ]
    for url in gets:
        assert client.get(url).status_code == 404, url
    for url in [f"/conversations/{pk}/rename/", f"/conversations/{pk}/pin/", f"/conversations/{pk}/delete/"]:
        assert client.post(url, {"title": "mine now", "pinned": "1"}).status_code == 404, url
    conversation.refresh_from_db()
    assert (conversation.title, conversation.pinned) == ("", False)
    assert bob.username not in client.get("/conversations/sidebar/?q=user0").content.decode()
    assert str(pk) not in client.get("/conversations/sidebar/?q=user0").content.decode()


def test_it_renames_inline_and_the_model_title_never_overwrites_it(as_alice, alice):
    conversation = thread(alice, title="first words")
    form = as_alice.get(f"/conversations/{conversation.pk}/rename/", **HTMX).content.decode()
    assert 'name="title" value="first words"' in form
    response = as_alice.post(f"/conversations/{conversation.pk}/rename/", {"title": "  A   better title "}, **HTMX)
    assert response.status_code == 200
    assert '<span class="thread-title">A better title</span>' in response.content.decode()
    assert json.loads(response["HX-Trigger"]) == {
        "chat:renamed": {"id": str(conversation.pk), "title": "A better title"}
    }
    conversation.refresh_from_db()
    assert (conversation.title, conversation.title_is_auto) == ("A better title", False)
    refused = as_alice.post(f"/conversations/{conversation.pk}/rename/", {"title": "   "}, **HTMX)
    assert refused.status_code == 400 and "cannot be empty" in refused.content.decode()
    conversation.refresh_from_db()
    assert conversation.title == "A better title"
    # Without htmx, a plain form post lands back on the conversation.
    plain = as_alice.post(f"/conversations/{conversation.pk}/rename/", {"title": "Plain"})
    assert plain.status_code == 302 and plain["Location"] == conversation.get_absolute_url()


def test_it_pins_and_unpins_a_thread(as_alice, alice):
    conversation = thread(alice, title="Pin me")
    thread(alice, title="Other")
    response = as_alice.post(f"/conversations/{conversation.pk}/pin/", {"pinned": "1"}, **HTMX)
    html = response.content.decode()
    assert html.index("Pinned") < html.index("Pin me") < html.index("Today") < html.index("Other")
    conversation.refresh_from_db()
    assert conversation.pinned
    as_alice.post(f"/conversations/{conversation.pk}/pin/", {"pinned": "0"}, **HTMX)
    conversation.refresh_from_db()
    assert not conversation.pinned


def test_it_deletes_a_thread_after_confirmation(as_alice, alice):
    conversation = thread(alice, title="Doomed")
    confirm = as_alice.get(f"/conversations/{conversation.pk}/delete/")
    assert confirm.status_code == 200 and "cannot be undone" in confirm.content.decode()
    assert Conversation.objects.filter(pk=conversation.pk).exists()
    response = as_alice.post(f"/conversations/{conversation.pk}/delete/", **HTMX)
    assert response.status_code == 200
    assert json.loads(response["HX-Trigger"]) == {"chat:deleted": {"id": str(conversation.pk)}}
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()
    other = thread(alice)
    plain = as_alice.post(f"/conversations/{other.pk}/delete/")
    assert plain.status_code == 302 and plain["Location"] == "/"


def test_it_serves_one_message_rendered_or_as_raw_text(as_alice, alice):
    conversation = make_conversation(alice)
    add_message(conversation, role="user", content="hi")
    reply = add_message(conversation, role="assistant", content="**bold** & `code`")
    elsewhere = add_message(make_conversation(alice), role="assistant", content="another thread's")
    base = f"/conversations/{conversation.pk}/messages"
    html = as_alice.get(f"{base}/{reply.pk}/").content.decode()
    assert html.startswith("<article") and "<strong>bold</strong>" in html and f'id="m{reply.pk}"' in html
    raw = as_alice.get(f"{base}/{reply.pk}/?format=text")
    assert raw["Content-Type"].startswith("text/plain") and raw.content.decode() == "**bold** & `code`"
    assert as_alice.get(f"{base}/{elsewhere.pk}/").status_code == 404


def _page_queries(client, conversation) -> tuple[int, float, str]:
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        response = client.get(conversation.get_absolute_url())
        elapsed = time.perf_counter() - started
    assert response.status_code == 200
    return len(queries), elapsed, response.content.decode()


def test_it_opens_a_long_thread_in_a_bounded_number_of_queries(as_alice, alice, django_assert_max_num_queries):
    short = thread(alice, n=10)
    long = thread(alice, n=1000)
    for i in range(30):
        thread(alice, title=f"other {i}")
    short_count, _, _ = _page_queries(as_alice, short)
    long_count, _, html = _page_queries(as_alice, long)
    assert long_count == short_count
    assert html.count('class="msg msg-') == 1000
    # Once rendered, five however long the thread: the session, the user, the conversation, the
    # sidebar's threads, and the active path (its messages, their versions for `‹ i / n ›`, whether
    # they have files, and the path's summary, in one query). The theme and display name come from
    # the cache, warmed at sign-in (force_login signs in too). The first view read the text of the
    # messages it rendered, in one more query (and the files, in another, when there were any).
    with django_assert_max_num_queries(5):
        as_alice.get(long.get_absolute_url())


def test_it_reports_the_time_to_render_a_thousand_message_thread(as_alice, alice, capsys, monkeypatch):
    """Not a timing assertion: prints the server time for docs/performance.md."""
    # Time templates as production renders them, without the test runner's per-template signal.
    monkeypatch.setattr(Template, "_render", test_utils._TestState.saved_data.template_render)
    rendering._local.clear()
    conversation = make_conversation(alice)
    reply = (
        "Here is **markdown** with code:\n\n```python\nprint('hello')\n```\n\n"
        "- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    )
    link_path(conversation, Message.objects.bulk_create(
        Message(conversation=conversation, role="user" if i % 2 == 0 else "assistant",
                content=f"Question {i}: how does it work?" if i % 2 == 0 else reply + f" {i}")
        for i in range(1000)
    ))  # fmt: skip
    cold_count, cold, html = _page_queries(as_alice, conversation)
    warm_count, warm, _ = min((_page_queries(as_alice, conversation) for _ in range(3)), key=lambda r: r[1])
    assert html.count("<strong>markdown</strong>") == 500
    # The first view reads the messages' text to render them, in one more query; the next ones never do.
    assert cold_count == warm_count + 1
    with capsys.disabled():
        print(
            f"\n[page rendering] 1,000-message thread on {connection.vendor}: "
            f"{cold * 1000:.0f} ms first view (markdown rendered), {warm * 1000:.0f} ms next views "
            f"(renderings cached), {warm_count} queries, {len(html) / 1024:.0f} KiB of HTML"
        )
