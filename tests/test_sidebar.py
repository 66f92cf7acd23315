"""The sidebar: threads newest first, grouped by day in the person's time zone, a page at a time,
searchable, and one query whatever the number of threads."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations import selectors
from conversations.models import Conversation, Message
from tests.factories import add_message, default_persona, make_conversation

pytestmark = pytest.mark.django_db

UTC = dt.UTC


def thread(owner, title="", *texts, at=None, **fields):
    conversation = make_conversation(owner, title=title, **fields)
    for i, text in enumerate(texts or ["hello"]):
        add_message(conversation, role="user" if i % 2 == 0 else "assistant", content=text)
    if at is not None:
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=at)
    return conversation


def many(owner, n):
    """n threads with a message each, one hour apart, newest first by index."""
    persona = default_persona()
    now = timezone.now()
    conversations = Conversation.objects.bulk_create(
        Conversation(owner=owner, persona=persona, title=f"T{i:04d}", updated_at=now - dt.timedelta(hours=i))
        for i in range(n)
    )
    Message.objects.bulk_create(Message(conversation=c, role="user", content=f"text {c.title}") for c in conversations)
    # auto_now_add overrode updated_at on insert: set it as intended.
    for i, c in enumerate(conversations):
        Conversation.objects.filter(pk=c.pk).update(updated_at=now - dt.timedelta(hours=i))
    return conversations


def titles(page):
    return [c.title for _, c in page.rows]


def labels(page):
    return [label for label, _ in page.rows if label]


def test_it_groups_threads_by_day_with_pinned_first(alice):
    now = dt.datetime(2026, 3, 18, 15, 0, tzinfo=UTC)
    for title, age in [("today", 0), ("yesterday", 1), ("week", 5), ("month", 20), ("feb", 35), ("last year", 400)]:
        thread(alice, title, at=now - dt.timedelta(days=age))
    thread(alice, "pinned old", at=now - dt.timedelta(days=90), pinned=True)
    page = selectors.sidebar_page(alice, now=now, tz=UTC)
    assert titles(page) == ["pinned old", "today", "yesterday", "week", "month", "feb", "last year"]
    assert labels(page) == ["Pinned", "Today", "Yesterday", "Previous 7 days", "Previous 30 days", "February",
                            "February 2025"]  # fmt: skip


def test_it_groups_by_the_persons_time_zone(client, alice):
    # 23:30 UTC on the 17th is already the 18th in Tokyo, and still the 17th in New York.
    now = timezone.now()
    late = now.astimezone(UTC).replace(hour=23, minute=30) - dt.timedelta(days=1)
    thread(alice, "late", at=late)
    tokyo = selectors.sidebar_page(alice, now=late + dt.timedelta(hours=1), tz=zoneinfo.ZoneInfo("Asia/Tokyo"))
    new_york = selectors.sidebar_page(alice, now=late + dt.timedelta(hours=1), tz=zoneinfo.ZoneInfo("America/New_York"))
    assert labels(tokyo) == ["Today"] and labels(new_york) == ["Today"]
    utc_next_morning = selectors.sidebar_page(alice, now=late + dt.timedelta(hours=1), tz=UTC)
    assert labels(utc_next_morning) == ["Yesterday"]
    # The page reads the zone from the cookie its script sets; a bad cookie falls back quietly.
    client.force_login(alice)
    client.cookies["tz"] = "Not/AZone"
    assert client.get("/conversations/sidebar/").status_code == 200


def test_it_lists_only_the_owners_threads_that_have_messages(alice, bob):
    thread(alice, "mine")
    make_conversation(alice, title="empty")
    thread(bob, "bob's")
    page = selectors.sidebar_page(alice, now=timezone.now(), tz=UTC)
    assert titles(page) == ["mine"]


def test_it_pages_through_thousands_of_threads_without_gaps_or_repeats(alice):
    made = many(alice, 120)
    thread(alice, "pinned", pinned=True, at=timezone.now() - dt.timedelta(days=400))
    seen, headings, cursor, group, pages = [], [], "", None, 0
    while True:
        page = selectors.sidebar_page(alice, cursor=cursor, after_group=group, now=timezone.now(), tz=UTC, size=50)
        pages += 1
        seen += titles(page)
        headings += labels(page)
        cursor, group = page.next_cursor, page.last_group
        if not cursor:
            break
    assert pages == 3
    assert seen == ["pinned"] + [c.title for c in made]
    assert len(headings) == len(set(headings))  # a group continues across pages without a second heading


def test_it_continues_a_group_across_pages_in_the_html(client, alice):
    many(alice, 60)
    client.force_login(alice)
    first = client.get("/conversations/sidebar/").content.decode()
    assert first.count('class="thread') - first.count("thread-group") - first.count("threads-") >= 50
    more = re.search(r'hx-get="([^"]+cursor=[^"]+)"', first).group(1).replace("&amp;", "&")
    second = client.get(more).content.decode()
    assert "T0050" in second and "T0059" in second and "T0049" not in second
    last_heading = re.findall(r"<h2>([^<]+)</h2>", first)[-1]
    assert f"<h2>{last_heading}</h2>" not in second


def test_it_searches_titles_and_message_text_on_every_branch_but_not_others_messages(alice, bob):
    thread(alice, "Trip to Lisbon", "Where can I eat pastéis de nata?", "Try Belém.")
    thread(alice, "Baking", "How long for banana bread?", "About an hour at 180C.")
    old = thread(alice, "Regenerated", "question", "first answer about zebras")
    first_answer = Message.objects.get(conversation=old, content__contains="zebras")
    # Regenerated: the zebras are on a version no longer on the active path.
    Message.objects.create(conversation=old, role="assistant", content="second answer", parent=first_answer.parent)
    thread(bob, "Bob's banana", "banana banana")

    def found(query):
        return titles(selectors.sidebar_page(alice, query=query, now=timezone.now(), tz=UTC))

    assert found("lisbon") == ["Trip to Lisbon"]
    assert found("banana") == ["Baking"]
    assert found("Belém") == ["Trip to Lisbon"]
    assert found("zebras") == ["Regenerated"]
    [(_, hit)] = selectors.sidebar_page(alice, query="zebras", now=timezone.now(), tz=UTC).rows
    assert hit.hit == first_answer.pk  # the link opens the branch where the text is
    assert found("bob's") == []
    assert found("nothing like this") == []
    if connection.vendor == "postgresql":
        # Full-text search: words in any order, each a prefix.
        assert found("bread banana") == ["Baking"]
        assert found("bak") == ["Baking"]
        assert found("nat past") == ["Trip to Lisbon"]
    else:
        # SQLite: a plain contains search.
        assert found("banana bread") == ["Baking"]
        assert found("bread banana") == []


def test_it_shows_where_a_search_matched_escaped_and_marked(client, alice):
    thread(alice, "Security", "what does <script>alert(1)</script> do?", "It is an XSS probe: never run it.")
    client.force_login(alice)
    html = client.get("/conversations/sidebar/", {"q": "probe"}).content.decode()
    assert '<span class="thread-snippet">' in html
    assert "<mark>probe</mark>" in html
    html = client.get("/conversations/sidebar/", {"q": "script"}).content.decode()
    assert "<script>" not in html and "&lt;<mark>script</mark>&gt;" in html
    empty = client.get("/conversations/sidebar/", {"q": "nope"}).content.decode()
    assert "No conversations match “nope”" in empty


def test_search_snippets_are_plain_text_not_markdown(client, alice):
    reply = (
        "## Storing **tomatoes**\n\n"
        "Keep `tomatoes` at room_temp, out of the [fridge](https://example.com/fridge): *always*.\n\n"
        "| fruit | where |\n|:--|--:|\n| tomatoes | counter |\n\n```python\nkeep(tomatoes, at='room_temp')\n```"
    )
    thread(alice, "Kitchen", "where do tomatoes go?", reply)
    client.force_login(alice)
    html = client.get("/conversations/sidebar/", {"q": "fridge"}).content.decode()
    snippet = re.search(r'<span class="thread-snippet">(.*?)</span>', html, re.S).group(1)
    assert "<mark>fridge</mark>" in snippet
    for syntax in ["**", "`", "](", "##", "|", ":--", "```", "*always*"]:
        assert syntax not in snippet, (syntax, snippet)
    assert "Keep tomatoes at room_temp, out of the <mark>fridge</mark>: always. fruit where tomatoes" in snippet
    assert snippet.endswith("…")  # cut off: the window was longer than what is left of it


def _queries(client, url, **params):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, params)
    assert response.status_code == 200
    return len(queries)


def test_it_needs_the_same_queries_for_5_or_200_threads(client, alice, bob, django_assert_max_num_queries):
    client.force_login(alice)
    many(alice, 5)
    few = [_queries(client, "/conversations/sidebar/"), _queries(client, "/conversations/sidebar/", q="text")]
    many(bob, 1)
    Conversation.objects.filter(owner=alice).delete()
    many(alice, 200)
    lots = [_queries(client, "/conversations/sidebar/"), _queries(client, "/conversations/sidebar/", q="text")]
    assert few == lots
    with django_assert_max_num_queries(3):  # session, user, threads
        client.get("/conversations/sidebar/", {"q": "T01"})
    # The whole page too: its sidebar does not add a query per thread.
    conversation = Conversation.objects.filter(owner=alice).first()
    with django_assert_max_num_queries(8):
        client.get(conversation.get_absolute_url())
