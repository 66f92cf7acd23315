"""The conversation page renders each message once and then serves it from the cache, keyed by what its
HTML depends on but its text: every change that can alter a message's HTML must show at the next view.

Each test views the page first (so every message is cached), makes one kind of change, and views it
again: a cache key that missed the change would serve the old HTML and fail the test.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations import services
from conversations.models import Attachment, Message, Summary
from tests.factories import add_message, make_conversation, make_turns

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_alice(client, alice):
    client.force_login(alice)
    return client


def view(client, conversation, **params) -> str:
    response = client.get(conversation.get_absolute_url(), params)
    assert response.status_code == 200
    return response.content.decode()


def article(html: str, message: Message | int) -> str:
    """One message's <article> in the page."""
    pk = message if isinstance(message, int) else message.pk
    found = re.search(rf'<article [^>]*id="m{pk}".*?</article>', html, re.S)
    assert found, f"message {pk} is not on the page"
    return found.group(0)


def version_count(html: str, message: Message | int) -> str | None:
    found = re.search(r'class="version-count"[^>]*>([^<]*)<', article(html, message))
    return found.group(1) if found else None


def sibling(of: Message, content: str) -> Message:
    """Another version of `of` (same parent), not on the active path."""
    return Message.objects.create(conversation=of.conversation, role=of.role, content=content, parent_id=of.parent_id)


def test_a_new_version_of_any_message_on_the_path_shows_its_count_at_once(as_alice, alice):
    conversation = make_conversation(alice)
    turns = make_turns(conversation, 8)
    html = view(as_alice, conversation)
    assert all(version_count(html, m) is None for m in turns)

    sibling(turns[3], "another reply, in the middle of the path")
    html = view(as_alice, conversation)
    assert version_count(html, turns[3]) == "1 / 2"
    assert "another reply" not in html  # the other version is one `›` away, not shown
    assert version_count(html, turns[2]) is None and version_count(html, turns[4]) is None

    sibling(turns[0], "another first question")  # a new root
    sibling(turns[3], "a third reply")
    sibling(turns[7], "another last reply")
    html = view(as_alice, conversation)
    assert version_count(html, turns[0]) == "1 / 2"
    assert version_count(html, turns[3]) == "1 / 3"
    assert version_count(html, turns[7]) == "1 / 2"
    # The buttons point at the neighbours: the ids the page switches to.
    nxt = re.search(r'version-next" data-act="switch" data-target="(\d+)"', article(html, turns[7]))
    assert nxt and int(nxt.group(1)) == Message.objects.get(content="another last reply").pk


def test_the_other_version_shows_its_own_place_among_the_versions(as_alice, alice):
    conversation = make_conversation(alice)
    turns = make_turns(conversation, 4)
    view(as_alice, conversation)
    later = sibling(turns[1], "a regenerated reply")
    html = view(as_alice, conversation, m=later.pk)  # the path through the other version
    assert version_count(html, later) == "2 / 2" and "a regenerated reply" in html
    assert version_count(view(as_alice, conversation), turns[1]) == "1 / 2"


def test_a_reply_shows_finished_with_its_usage_once_it_ends(as_alice, alice):
    conversation = make_conversation(alice)
    make_turns(conversation, 2)
    add_message(conversation, "user", "and then?")
    reply = add_message(conversation, "assistant", "Partly wri", status="streaming", model="offline:demo")
    html = view(as_alice, conversation)
    assert 'data-status="streaming"' in article(html, reply) and "Partly wri" in article(html, reply)

    # While it streams its text grows (the flusher's writes): never served from the cache.
    Message.objects.filter(pk=reply.pk).update(content="Partly written, and")
    assert "Partly written, and" in article(view(as_alice, conversation), reply)

    services.reply_finish(
        reply_id=reply.pk, content="Partly written, and **done**.", status="complete", input_tokens=40, output_tokens=7
    )
    shown = article(view(as_alice, conversation), reply)
    assert 'data-status="complete"' in shown and "msg-streaming" not in shown
    assert "<strong>done</strong>" in shown
    assert '<dd class="usage-in">40</dd>' in shown and '<dd class="usage-out">7</dd>' in shown


def test_a_reply_marked_interrupted_shows_it(as_alice, alice):
    conversation = make_conversation(alice)
    add_message(conversation, "user", "hello")
    reply = add_message(conversation, "assistant", "Half a rep", status="streaming")
    assert 'data-status="streaming"' in article(view(as_alice, conversation), reply)
    Message.objects.filter(pk=reply.pk).update(updated_at=timezone.now() - dt.timedelta(minutes=5))
    assert [m.pk for m in services.replies_interrupt_stale(conversation_id=conversation.pk)] == [reply.pk]
    shown = article(view(as_alice, conversation), reply)
    assert 'data-status="interrupted"' in shown and "Half a rep" in shown and "Try again" in shown


def test_a_summary_that_lands_shows_its_divider_after_the_message_it_runs_through(as_alice, alice):
    conversation = make_conversation(alice)
    turns = make_turns(conversation, 8)
    assert "summary-divider" not in view(as_alice, conversation)

    Summary.objects.create(conversation=conversation, through=turns[3], text="FIRST SUMMARY")
    html = view(as_alice, conversation)
    assert html.count("summary-divider") == 1 and "FIRST SUMMARY" in html
    assert html.index(f'id="m{turns[3].pk}"') < html.index("summary-divider") < html.index(f'id="m{turns[4].pk}"')

    # A later summary of the same path: its divider replaces the first one.
    Summary.objects.create(conversation=conversation, through=turns[5], text="LATER SUMMARY")
    html = view(as_alice, conversation)
    assert html.count("summary-divider") == 1 and "LATER SUMMARY" in html and "FIRST SUMMARY" not in html
    assert html.index(f'id="m{turns[5].pk}"') < html.index("summary-divider") < html.index(f'id="m{turns[6].pk}"')

    # A branch made before both summaries' messages carries neither.
    branch = sibling(turns[2], "a question asked differently")
    html = view(as_alice, conversation, m=branch.pk)
    assert "a question asked differently" in html and "summary-divider" not in html
    # One made between them carries the first.
    later_branch = sibling(turns[4], "another question, after the first summary")
    html = view(as_alice, conversation, m=later_branch.pk)
    assert "FIRST SUMMARY" in html and "LATER SUMMARY" not in html


def test_a_messages_files_show_whether_it_was_rendered_now_or_before(as_alice, alice):
    conversation = make_conversation(alice)
    question = add_message(conversation, "user", "what is in this picture?")
    add_message(conversation, "assistant", "A cat.")
    Attachment.objects.create(
        owner=alice, conversation=conversation, message=question, name="cat.png", kind="image",
        content_type="image/png", size=1234, width=40, height=30, file="attachments/x/cat",
    )  # fmt: skip
    with CaptureQueriesContext(connection) as cold:
        first = view(as_alice, conversation)
    with CaptureQueriesContext(connection) as warm:
        again = view(as_alice, conversation)
    assert 'alt="cat.png"' in article(first, question) and article(again, question) == article(first, question)
    # Rendered afresh, the messages' text and their files took a query each; from the cache, none
    # (the path's own query is not the ORM's).
    for table in (Message._meta.db_table, Attachment._meta.db_table):
        assert len([q for q in cold.captured_queries if q["sql"].startswith(f'SELECT "{table}".')]) == 1
        assert not [q for q in warm.captured_queries if q["sql"].startswith(f'SELECT "{table}".')]


def test_a_rendered_page_reads_no_message_text_again(as_alice, alice):
    conversation = make_conversation(alice)
    make_turns(conversation, 30, words=50)
    view(as_alice, conversation)
    with CaptureQueriesContext(connection) as queries:
        html = view(as_alice, conversation)
    assert html.count('class="msg msg-') == 30
    assert not [q["sql"] for q in queries.captured_queries if "content" in q["sql"]]


def test_a_message_saved_by_hand_shows_its_new_text(as_alice, alice):
    """A finished message's text never changes in the site; changed by hand through the ORM's save()
    (which moves `updated_at`), the page shows the new text."""
    conversation = make_conversation(alice)
    turns = make_turns(conversation, 2)
    view(as_alice, conversation)
    turns[1].content = "**Corrected** by an operator."
    turns[1].save()
    assert "<strong>Corrected</strong>" in article(view(as_alice, conversation), turns[1])
    # Even a bare UPDATE of what the HTML shows besides the text (here without `updated_at`).
    Message.objects.filter(pk=turns[1].pk).update(status="error", error_code="provider_unavailable")
    shown = article(view(as_alice, conversation), turns[1])
    assert 'data-status="error"' in shown and "This reply failed." in shown


def test_the_messages_own_rendering_is_the_pages(as_alice, alice):
    conversation = make_conversation(alice)
    turns = make_turns(conversation, 4)
    sibling(turns[3], "another reply")
    html = view(as_alice, conversation)
    one = as_alice.get(f"/conversations/{conversation.pk}/messages/{turns[3].pk}/").content.decode()
    assert one == article(html, turns[3]) + "\n"
    assert as_alice.get(f"/conversations/{conversation.pk}/messages/{2**63}/").status_code == 404
