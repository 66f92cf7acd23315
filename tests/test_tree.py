"""A conversation is a tree: edits and regenerations are versions, requests follow the active path,
`switch` changes the path for every socket (docs/protocol.md, "Versions and branches")."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conversations import selectors, summaries
from conversations.context import SUMMARY_HEADING
from conversations.models import Attachment, Conversation, Message, Summary
from tests.conftest import open_socket
from tests.factories import add_message, make_conversation, make_persona, make_turns
from tests.fakes.provider import Reply

pytestmark = pytest.mark.django_db(transaction=True)

SYSTEM = "You are a helpful, concise assistant. Use markdown where it helps."


def chat_requests(provider):
    return [r for r in provider.requests if r.path == "/v1/chat/completions"]


def sent_messages(provider):
    """The last chat request's messages as (role, content)."""
    return [(m["role"], m["content"]) for m in chat_requests(provider)[-1].json["messages"]]


async def turn(ws, fake_provider, text, answer, **extra):
    fake_provider.script(Reply(text=answer))
    await ws.send({"type": "send", "client_id": str(uuid.uuid4()), "content": text, **extra})
    message = await ws.until("message")
    end = await ws.until("end", timeout=15)
    assert end["status"] == "complete", end
    return message, end


async def active_contents(conv_id):
    def read():
        conv = Conversation.objects.get(pk=conv_id)
        return [p.message.content for p in selectors.active_path(conv)]

    return await sync_to_async(read)()


async def test_an_edit_of_the_first_of_five_messages_sends_only_it_and_switching_back_sends_the_old_path(
    alice, fake_provider
):
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    users = []
    for i in range(5):
        message, _ = await turn(ws, fake_provider, f"question {i}", f"answer {i}")
        users.append(message["message"])

    # Edit the first message: a sibling of it, a new root; the request holds only it.
    message, end = await turn(ws, fake_provider, "question 0, edited", "answer to the edit", edit_of=users[0]["id"])
    assert message["message"]["parent_id"] is None
    assert message["siblings"] == [users[0]["id"], message["message"]["id"]]
    assert sent_messages(fake_provider) == [("system", SYSTEM), ("user", "question 0, edited")]
    assert await active_contents(conv.pk) == ["question 0, edited", "answer to the edit"]

    # Back to version 1 of the first message: its latest path, all five turns, is active again.
    await ws.send({"type": "switch", "message_id": users[0]["id"]})
    path = await ws.until("path")
    assert [m["content"] for m in path["messages"]] == [t for i in range(5) for t in (f"question {i}", f"answer {i}")]
    first = path["messages"][0]
    assert first["siblings"] == [users[0]["id"], message["message"]["id"]] and first["parent_id"] is None
    assert {m["status"] for m in path["messages"]} == {"complete"}
    assert all(m["parent_id"] == prev["id"] for prev, m in zip(path["messages"], path["messages"][1:], strict=False))

    await turn(ws, fake_provider, "question 5", "answer 5")
    expected = [("system", SYSTEM)]
    for i in range(5):
        expected += [("user", f"question {i}"), ("assistant", f"answer {i}")]
    assert sent_messages(fake_provider) == [*expected, ("user", "question 5")]

    # And the edited branch is still there, one switch away, untouched.
    await ws.send({"type": "switch", "message_id": message["message"]["id"]})
    path = await ws.until("path")
    assert [m["content"] for m in path["messages"]] == ["question 0, edited", "answer to the edit"]
    assert await sync_to_async(Message.objects.filter(conversation=conv).count)() == 14
    await ws.close()


async def test_three_regenerations_are_all_stored_and_reachable(alice, fake_provider):
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await turn(ws, fake_provider, "tell me a joke", "joke 0")
    await turn(ws, fake_provider, "another", "second joke 0")
    _, first_end = await turn(ws, fake_provider, "and one more", "third joke 0")
    replies = [first_end["message_id"]]
    for i in range(1, 4):
        fake_provider.script(Reply(text=f"third joke {i}"))
        # An explicit reply id the first time, the bare frame (the active leaf's reply) after.
        await ws.send({"type": "regenerate", **({"message_id": replies[0]} if i == 1 else {})})
        start = await ws.until("start")
        assert start["siblings"] == [*replies, start["message_id"]]
        assert start["parent_id"] is not None
        end = await ws.until("end", timeout=15)
        assert end["content"] == f"third joke {i}"
        replies.append(end["message_id"])
        # Every regeneration answers the same question, on the same path.
        assert sent_messages(fake_provider)[-1] == ("user", "and one more")
        assert len(sent_messages(fake_provider)) == 6

    for i, reply_id in enumerate(replies):
        await ws.send({"type": "switch", "message_id": reply_id})
        path = await ws.until("path")
        assert path["messages"][-1]["content"] == f"third joke {i}"
        assert path["messages"][-1]["siblings"] == replies
        assert [m["content"] for m in path["messages"][:-1]] == [
            "tell me a joke",
            "joke 0",
            "another",
            "second joke 0",
            "and one more",
        ]
    assert await active_contents(conv.pk) == [
        "tell me a joke",
        "joke 0",
        "another",
        "second joke 0",
        "and one more",
        "third joke 3",
    ]
    # Regenerating an earlier reply makes a version of that one, and the path below it is new.
    fake_provider.script(Reply(text="joke 0, again"))
    first_reply = path["messages"][1]["id"]
    await ws.send({"type": "regenerate", "message_id": first_reply})
    start = await ws.until("start")
    assert start["siblings"] == [first_reply, start["message_id"]]
    await ws.until("end", timeout=15)
    assert sent_messages(fake_provider)[1:] == [("user", "tell me a joke")]
    await ws.close()


async def test_switch_reaches_every_socket_and_a_reply_streaming_on_another_branch_keeps_streaming(
    alice, fake_provider
):
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    _, other = await open_socket(alice, conv.pk)
    await ws.recv()
    await other.recv()
    first, _ = await turn(ws, fake_provider, "first question", "first answer")
    edit, _ = await turn(ws, fake_provider, "edited question", "edited answer", edit_of=first["message"]["id"])

    # A slow reply on the edited branch; meanwhile the user switches to the first branch and back.
    slow = "slow " * 60
    fake_provider.script(Reply(text=slow.strip(), token_delay=0.02))
    await ws.send_message("keep talking")
    start = await ws.until("start")
    await ws.until("delta")
    await ws.send({"type": "switch", "message_id": first["message"]["id"]})
    for sock in (ws, other):
        path = await sock.until("path")
        assert [m["content"] for m in path["messages"]] == ["first question", "first answer"]
    # It is still running: a send is busy, and the deltas keep coming to every socket.
    await ws.send_message("not now")
    assert (await ws.until("error"))["code"] == "busy"
    await ws.send({"type": "switch", "message_id": edit["message"]["id"]})
    path = await other.until("path")
    last = path["messages"][-1]
    assert last["id"] == start["message_id"] and last["role"] == "assistant"
    end = await ws.until("end", timeout=20)
    assert end["status"] == "complete" and end["content"] == slow.strip()
    assert ws.text_of(start["message_id"]) == slow.strip()  # no token lost or repeated across the switches
    await other.until("end", timeout=20)
    assert other.text_of(start["message_id"]) == slow.strip()
    assert await active_contents(conv.pk) == [
        "edited question",
        "edited answer",
        "keep talking",
        slow.strip(),
    ]
    # A message of another conversation, or none: not found, nothing changes.
    await ws.send({"type": "switch", "message_id": 10**9})
    assert (await ws.until("error"))["code"] == "not_found"
    await ws.close()
    await other.close()


async def test_send_with_parent_id_branches_from_any_reply_and_null_starts_a_new_root(alice, fake_provider):
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    _, a0 = await turn(ws, fake_provider, "q0", "a0")
    await turn(ws, fake_provider, "q1", "a1")
    message, _ = await turn(ws, fake_provider, "q1 again", "a1 again", parent_id=a0["message_id"])
    assert message["parent_id"] == a0["message_id"] and len(message["siblings"]) == 2
    assert sent_messages(fake_provider)[1:] == [("user", "q0"), ("assistant", "a0"), ("user", "q1 again")]
    message, _ = await turn(ws, fake_provider, "fresh start", "fresh answer", parent_id=None)
    assert message["parent_id"] is None and len(message["siblings"]) == 2
    assert sent_messages(fake_provider)[1:] == [("user", "fresh start")]
    # A user message is no parent for a user message.
    user_id = message["message"]["id"]
    await ws.send({"type": "send", "client_id": str(uuid.uuid4()), "content": "x", "parent_id": user_id})
    assert (await ws.until("error"))["code"] == "invalid"
    assert await sync_to_async(Message.objects.filter(conversation=conv).count)() == 8
    await ws.close()


def test_a_branch_made_early_in_a_long_thread_never_carries_the_summary_of_the_other_branch(alice, fake_provider):
    persona = make_persona("tiny", context_budget_tokens=300, system_prompt="Be brief.")
    conv = make_conversation(alice, persona, title_is_auto=False, title="Long")
    turns = make_turns(conv, 24, words=8)
    fake_provider.script(Reply(text="MAIN SUMMARY of the long thread."))
    assert summaries.summarize(conv.pk) is True
    main_summary = Summary.objects.get(conversation=conv)
    assert main_summary.through_id > turns[2].pk  # it covers the third message and more

    async def branch():
        ok, ws = await open_socket(alice, conv.pk)
        await ws.recv()
        # Edit the third message (a user message): the new branch forks before the summary's end.
        message, _ = await turn(ws, fake_provider, "the third message, edited", "branch answer", edit_of=turns[2].pk)
        request = chat_requests(fake_provider)[-1].json["messages"]
        assert "MAIN SUMMARY" not in request[0]["content"] and SUMMARY_HEADING not in request[0]["content"]
        assert [m["content"] for m in request[1:]] == [turns[0].content, turns[1].content, "the third message, edited"]
        for i in range(12):
            await turn(ws, fake_provider, f"branch question {i} " + "word " * 8, f"branch answer {i} " + "word " * 8)
            request = chat_requests(fake_provider)[-1].json["messages"]
            assert "MAIN SUMMARY" not in request[0]["content"]
        await ws.close()

    asyncio.run(branch())
    # The branch grew past its budget: it gets its own summary, of its own path only.
    fake_provider.script(Reply(text="BRANCH SUMMARY."))
    conv.refresh_from_db()
    assert summaries.needs_summary(conv)
    assert summaries.summarize(conv.pk) is True
    branch_summary = Summary.objects.exclude(pk=main_summary.pk).get(conversation=conv)
    asked = [r for r in fake_provider.requests if "fold into the summary" in str(r.json)][-1]
    assert "MAIN SUMMARY" not in str(asked.json) and turns[4].content not in str(asked.json)
    conv.refresh_from_db()
    assert selectors.path_history(conv).summary == branch_summary
    # The main branch still uses its own summary.
    assert selectors.path_history(conv, leaf_id=turns[-1].pk).summary == main_summary


def test_the_page_renders_the_active_path_with_versions_in_a_fixed_number_of_queries(alice, client):
    client.force_login(alice)

    def thread(branches: int) -> Conversation:
        conv = make_conversation(alice)
        make_turns(conv, 10)
        leaf = conv.active_leaf_id
        # `branches` other versions of the last question and of an early reply, each with replies.
        path = selectors.path_ids(conv.pk, leaf)
        for i in range(branches):
            q = Message.objects.create(conversation=conv, role="user", content=f"alt {i}", parent_id=path[7])
            Message.objects.create(conversation=conv, role="assistant", content=f"alt answer {i}", parent=q)
            Message.objects.create(conversation=conv, role="assistant", content=f"early {i}", parent_id=path[0])
        return conv

    counts = []
    for branches in (0, 1, 30):
        conv = thread(branches)
        with CaptureQueriesContext(connection) as queries:
            response = client.get(conv.get_absolute_url())
        assert response.status_code == 200
        html = response.content.decode()
        assert "alt answer" not in html and "early 0" not in html  # other branches are not rendered
        if branches:
            assert f"1 / {branches + 1}" in html and f"Version 1 of {branches + 1}" in html
        counts.append(len(queries.captured_queries))
    assert counts[0] == counts[1] == counts[2], counts


def test_search_opens_the_branch_where_the_text_matched(alice, client):
    client.force_login(alice)
    conv = make_conversation(alice)
    first = add_message(conv, "user", "where do zebras live?")
    add_message(conv, "assistant", "In Africa.")
    Message.objects.create(conversation=conv, role="user", content="where do lions live?", parent=None)
    hidden_branch = Message.objects.create(
        conversation=conv, role="assistant", content="Savannas, mostly.", parent=conv.messages.last()
    )
    Conversation.objects.filter(pk=conv.pk).update(active_leaf=hidden_branch)
    html = client.get("/conversations/sidebar/", {"q": "zebras"}).content.decode()
    assert f"{conv.get_absolute_url()}?m={first.pk}" in html
    page = client.get(conv.get_absolute_url(), {"m": first.pk}).content.decode()
    assert "zebras" in page and "lions" not in page and f'data-open-leaf="{first.pk + 1}"' in page
    # Opening it changed nothing on the server: the page's script makes it active with `switch`.
    conv.refresh_from_db()
    assert conv.active_leaf_id == hidden_branch.pk


async def test_the_path_frame_carries_the_summary_and_files_of_the_path_it_shows(alice):
    """The page puts the "earlier messages summarized" divider after the message a path's summary runs
    through; after a `switch` it has only the `path` frame to go by."""

    def build():
        conv = make_conversation(alice)
        turns = make_turns(conv, 8)
        Summary.objects.create(conversation=conv, through=turns[3], text="SUMMARY OF 0-3")
        early = Message.objects.create(conversation=conv, role="user", content="early branch", parent=turns[1])
        late = Message.objects.create(conversation=conv, role="user", content="late branch", parent=turns[5])
        Attachment.objects.create(
            owner=alice, conversation=conv, message=turns[0], name="plan.pdf", kind="pdf",
            content_type="application/pdf", size=1234, file="attachments/x/plan",
        )  # fmt: skip
        return conv, [t.pk for t in turns], early.pk, late.pk

    conv, turns, early, late = await sync_to_async(build)()
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    # A branch made before the summary's message: no summary (its path does not contain that message).
    await ws.send({"type": "switch", "message_id": early})
    path = await ws.until("path")
    assert [m["id"] for m in path["messages"]] == [*turns[:2], early] and path["summary"] is None
    # Back to the main path: the summary again, through the same message.
    await ws.send({"type": "switch", "message_id": turns[2]})
    path = await ws.until("path")
    assert [m["id"] for m in path["messages"]] == turns
    assert path["summary"] == {"through_id": turns[3], "text": "SUMMARY OF 0-3"}
    # Each message as in `message`: the first one's file too.
    assert path["messages"][0]["attachments"] == [
        {"id": path["messages"][0]["attachments"][0]["id"], "name": "plan.pdf", "size": 1234,
         "content_type": "application/pdf"}
    ]  # fmt: skip
    assert all("attachments" not in m for m in path["messages"][1:])
    # A branch made after it: the summary still covers the start of that path.
    await ws.send({"type": "switch", "message_id": late})
    path = await ws.until("path")
    assert [m["id"] for m in path["messages"]] == [*turns[:6], late]
    assert path["summary"] == {"through_id": turns[3], "text": "SUMMARY OF 0-3"}
    await ws.close()


def test_a_path_reads_its_ids_and_the_summary_reaching_furthest_along_it_in_one_query(alice):
    conv = make_conversation(alice)
    turns = make_turns(conv, 8)
    early = Summary.objects.create(conversation=conv, through=turns[1], text="EARLY")
    later = Summary.objects.create(conversation=conv, through=turns[5], text="LATER")
    at_leaf = Summary.objects.create(conversation=conv, through=turns[7], text="AT THE LEAF")
    # Another branch's summary (forked after turns[2]) is not on this path.
    other = add_message(conv, "user", "other branch")
    Message.objects.filter(pk=other.pk).update(parent_id=turns[2].pk)
    Summary.objects.create(conversation=conv, through=other, text="OTHER BRANCH")
    ids = [t.pk for t in turns]
    with CaptureQueriesContext(connection) as queries:
        history = selectors.path_history(conv, leaf_id=turns[7].pk)
    assert len(queries) == 1
    assert (history.ids, history.summary, history.summary_text) == (ids, at_leaf, "AT THE LEAF")
    # Without the leaf, the summary through it is not this request's.
    history = selectors.path_history(conv, leaf_id=turns[7].pk, include_leaf=False)
    assert (history.ids, history.summary, history.summary_text) == (ids[:-1], later, "LATER")
    assert history.summary.through_id == turns[5].pk
    assert history.unsummarized() == ids[6:7]
    assert selectors.path_history(conv, leaf_id=turns[4].pk).summary == early
    assert selectors.path_history(conv, leaf_id=turns[0].pk).summary is None
    assert selectors.path_history(conv, leaf_id=other.pk).ids == [*ids[:3], other.pk]
    # The leaf's stop flag comes with the path (a reply's build reads the path above it from the reply).
    assert history.leaf_stop_requested is False
    Message.objects.filter(pk=turns[7].pk).update(stop_requested=True)
    for include_leaf in (True, False):
        read = selectors.path_history(conv, leaf_id=turns[7].pk, include_leaf=include_leaf)
        assert read.leaf_stop_requested is True and read.ids == ids[: 8 if include_leaf else 7]
    assert selectors.path_history(conv, leaf_id=turns[6].pk).leaf_stop_requested is False
    # The same choice as `summary_for_path`, which the summarizer uses.
    for leaf in (turns[7].pk, turns[6].pk, other.pk):
        history = selectors.path_history(conv, leaf_id=leaf)
        assert history.summary == selectors.summary_for_path(conv.pk, history.ids)
