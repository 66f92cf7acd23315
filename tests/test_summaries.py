"""Background summaries, end to end through the real worker and the fake provider (real SDKs)."""

from __future__ import annotations

import datetime as dt
import json
import threading

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from conversations import summaries
from conversations.context import SUMMARY_HEADING, SUMMARY_SYSTEM, estimate_tokens
from conversations.history import build_chat_request, build_for_reply
from conversations.models import Conversation, Message, Summary
from conversations.selectors import history_turns, path_history
from conversations.tasks import after_reply, summarize_conversation, title_conversation
from tests.conftest import open_socket
from tests.factories import add_message, make_conversation, make_persona, make_turns
from tests.fakes.provider import Reply

pytestmark = pytest.mark.django_db(transaction=True)

SUMMARY_TEXT = "SUMMARY: the user asked numbered questions about items and got short answers."


@pytest.fixture
def run_worker(monkeypatch):
    """`manage.py db_worker --batch`: runs every task that is due, then returns."""
    from django_tasks_db.management.commands import db_worker

    # Its SIGINT/SIGTERM handlers need the main thread and would outlive the command.
    monkeypatch.setattr(db_worker.Worker, "configure_signals", lambda self: None)

    def run() -> None:
        call_command("db_worker", "--batch", "--no-startup-delay", "--no-reload", verbosity=0)

    return run


def summary_tasks(conversation_id, **filters):
    return DBTaskResult.objects.filter(
        task_path=summarize_conversation.module_path, args_kwargs__args__0=str(conversation_id), **filters
    )


def summary_requests(provider):
    return [r for r in provider.requests if r.json.get("messages", [{}])[0].get("content") == SUMMARY_SYSTEM]


def chat_requests(provider):
    return [r for r in provider.requests if r.json.get("messages", [{}])[0].get("content") != SUMMARY_SYSTEM]


def tiny_conversation(owner, budget: int = 300, turns: int = 0, words: int = 5, **fields) -> Conversation:
    persona = make_persona("tiny", context_budget_tokens=budget, system_prompt="Be brief.")
    conv = make_conversation(owner, persona, title_is_auto=False, title="Tiny", **fields)
    if turns:
        make_turns(conv, turns, words=words)
    return conv


def summary_now(conv) -> Summary | None:
    """The summary the active path uses now (None before the first)."""
    return path_history(Conversation.objects.get(pk=conv.pk)).summary


def question(i: int) -> str:
    return f"Question q{i}marker: tell me more about item number {i} and why it matters to the whole project here."


async def chat(ws, text: str) -> dict:
    await ws.send_message(text)
    end = await ws.until("end", timeout=15)
    assert end["status"] == "complete", end
    return end


async def wait_for(predicate, timeout: float = 5.0) -> None:
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while not await sync_to_async(predicate)():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_it_summarizes_in_the_worker_and_the_next_request_carries_the_summary(alice, fake_provider, run_worker):
    conv = await sync_to_async(tiny_conversation)(alice, budget=300)
    ok, ws = await open_socket(alice, conv.pk)
    assert ok
    await ws.recv()
    for i in range(6):
        fake_provider.script(Reply(text=f"Answer a{i}marker: " + "a short and plain answer " * 4))
        await chat(ws, question(i))
    await wait_for(lambda: summary_tasks(conv.pk, status="READY").exists())
    assert await sync_to_async(summary_now)(conv) is None  # nothing before the worker

    fake_provider.script(Reply(text=SUMMARY_TEXT))
    await sync_to_async(run_worker)()

    summary = await sync_to_async(summary_now)(conv)
    assert summary.text == SUMMARY_TEXT
    # Replies finishing close together may each queue a run; the runs after the first find nothing to do.
    results = await sync_to_async(lambda: list(summary_tasks(conv.pk).values_list("status", "return_value")))()
    assert sorted(results, key=str)[-1] == ("SUCCESSFUL", True), results
    assert {status for status, _ in results} == {"SUCCESSFUL"} and [r for _, r in results].count(True) == 1
    [summary_request] = summary_requests(fake_provider)
    rows = await sync_to_async(lambda: list(conv.messages.order_by("id")))()
    summarized = [m for m in rows if m.pk <= summary.through_id]
    verbatim = [m for m in rows if m.pk > summary.through_id]
    assert summarized and verbatim and verbatim[0].role == "user"
    asked = summary_request.json["messages"][1]["content"]
    assert all(m.content.strip() in asked for m in summarized)
    assert not any(m.content.strip() in asked for m in verbatim)

    fake_provider.script(Reply(text="Answer a6marker."))
    await chat(ws, question(6))
    request = chat_requests(fake_provider)[-1].json["messages"]
    assert request[0]["role"] == "system"
    assert request[0]["content"] == f"Be brief.\n\n{SUMMARY_HEADING}\n{SUMMARY_TEXT}"
    sent = json.dumps(request[1:])
    for m in summarized:
        assert m.content.split(":")[0] not in sent  # the marker word: the summarized turn is gone
    assert [r["content"] for r in request[1:-1]] == [m.content for m in verbatim]  # recent turns, verbatim
    assert request[-1] == {"role": "user", "content": question(6)}
    await ws.close()

    # The page marks where the summary takes over, and opens to show it.
    client = Client()
    await sync_to_async(client.force_login)(alice)
    page = (await sync_to_async(client.get)(conv.get_absolute_url())).content.decode()
    assert "Earlier messages are summarized for the model" in page
    assert SUMMARY_TEXT in page
    divider = page.index("summary-divider")
    marker = lambda m: m.content.split(":")[0]  # noqa: E731 - "Question q3marker", "Answer a3marker"
    assert page.index(marker(summarized[-1])) < divider < page.index(marker(verbatim[0]))


async def test_it_keeps_chatting_when_a_summary_fails_and_retries_later(alice, fake_provider, run_worker):
    conv = await sync_to_async(tiny_conversation)(alice, budget=200, turns=12)
    await sync_to_async(after_reply)(conv.pk)
    fake_provider.script(Reply(status=500))
    await sync_to_async(run_worker)()

    assert await sync_to_async(lambda: summary_tasks(conv.pk, status="FAILED").count())() == 1
    retry = await sync_to_async(lambda: summary_tasks(conv.pk, status="READY").get())()
    assert retry.args_kwargs["args"] == [str(conv.pk), 2, None]
    assert retry.run_after > timezone.now() + dt.timedelta(seconds=20)
    conv = await sync_to_async(Conversation.objects.get)(pk=conv.pk)
    assert (await sync_to_async(summary_now)(conv), conv.summarizing_since) == (None, None)

    # Chatting goes on: the request is trimmed to the budget meanwhile, the new message kept.
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await chat(ws, "Still there? newest message")
    await ws.close()
    request = chat_requests(fake_provider)[-1].json["messages"]
    assert request[-1] == {"role": "user", "content": "Still there? newest message"}
    assert 1 < len(request) < 14  # older turns trimmed, no summary in the system prompt
    assert SUMMARY_HEADING not in request[0]["content"]
    assert sum(estimate_tokens(m["content"]) + 4 for m in request) <= 200

    # The finished reply queued a fresh run (the deferred retry is not due yet); it succeeds.
    await wait_for(lambda: summary_tasks(conv.pk, status="READY").count() == 2)
    fake_provider.script(Reply(text=SUMMARY_TEXT))
    await sync_to_async(run_worker)()
    assert (await sync_to_async(summary_now)(conv)).text == SUMMARY_TEXT

    # The deferred retry, once due, finds nothing left to do and calls no model.
    await sync_to_async(lambda: summary_tasks(conv.pk, status="READY").update(run_after=timezone.now()))()
    before = len(fake_provider.requests)
    await sync_to_async(run_worker)()
    done = await sync_to_async(lambda: summary_tasks(conv.pk, args_kwargs__args__1=2).get())()
    assert (done.status, done.return_value) == ("SUCCESSFUL", False)
    assert len(fake_provider.requests) == before


@pytest.mark.postgres
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="two workers racing is a PostgreSQL deployment (SQLite serializes writers); runs in CI's PostgreSQL pass",
)
def test_it_writes_one_summary_when_two_workers_run_the_task_at_once(alice, fake_provider):
    conv = tiny_conversation(alice, budget=200, turns=12)
    # The winner's model call is slow, so both runs are surely inside the task together.
    fake_provider.script(Reply(text=SUMMARY_TEXT, first_token_delay=0.5))
    barrier = threading.Barrier(2)
    results: list[object] = []

    def worker() -> None:
        try:
            barrier.wait()
            results.append(summarize_conversation.call(str(conv.pk)))
        except Exception as exc:
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(results, key=str) == [False, True]
    assert len(summary_requests(fake_provider)) == 1
    conv.refresh_from_db()
    assert summary_now(conv).text == SUMMARY_TEXT and conv.summarizing_since is None


def test_it_drops_a_summary_overtaken_by_a_newer_run(alice, fake_provider):
    """A run slower than the claim timeout loses to the run that took over, and frees no claim of it."""
    conv = tiny_conversation(alice, budget=200, turns=12)
    fake_provider.script(Reply(text="stale summary", first_token_delay=1.0), Reply(text=SUMMARY_TEXT))
    results: list[object] = []

    def slow() -> None:
        try:
            results.append(summaries.summarize(conv.pk))
        finally:
            connection.close()

    thread = threading.Thread(target=slow)
    thread.start()
    deadline = timezone.now() + dt.timedelta(seconds=5)
    while not fake_provider.requests:
        assert timezone.now() < deadline
    expired = timezone.now() - summaries.CLAIM_TIMEOUT - dt.timedelta(seconds=1)
    Conversation.objects.filter(pk=conv.pk).update(summarizing_since=expired)
    assert summaries.summarize(conv.pk) is True
    thread.join(timeout=10)
    assert results == [False]
    assert summary_now(conv).text == SUMMARY_TEXT
    assert Summary.objects.filter(conversation=conv).count() == 1


def test_it_refuses_while_another_run_holds_a_fresh_claim(alice, fake_provider):
    conv = tiny_conversation(alice, budget=200, turns=12)
    Conversation.objects.filter(pk=conv.pk).update(summarizing_since=timezone.now())
    assert summaries.summarize(conv.pk) is False
    assert fake_provider.requests == []


def test_it_is_idempotent(alice, fake_provider):
    conv = tiny_conversation(alice, budget=200, turns=12)
    fake_provider.script(Reply(text=SUMMARY_TEXT))
    assert summaries.summarize(conv.pk) is True
    through = summary_now(conv).through_id
    assert summaries.summarize(conv.pk) is False  # within budget now: nothing to do
    assert (summary_now(conv).text, summary_now(conv).through_id) == (SUMMARY_TEXT, through)
    assert len(fake_provider.requests) == 1


def test_it_never_summarizes_a_reply_still_streaming_or_its_question(alice, fake_provider):
    conv = tiny_conversation(alice, budget=200, turns=12)
    asked = add_message(conv, role="user", content="The question being answered")
    streaming = add_message(conv, role="assistant", status="streaming", content="PARTIAL streaming text")
    fake_provider.script(Reply(text=SUMMARY_TEXT))
    assert summaries.summarize(conv.pk) is True
    assert summary_now(conv).through_id < asked.pk < streaming.pk
    sent = summary_requests(fake_provider)[0].json["messages"][1]["content"]
    assert "PARTIAL" not in sent and "being answered" not in sent


def test_it_folds_the_previous_summary_into_the_next(alice, fake_provider):
    conv = tiny_conversation(alice, budget=200, turns=4)
    Summary.objects.create(
        conversation=conv, through=conv.messages.order_by("id")[3], text="OLD SUMMARY of the first turns."
    )
    make_turns(conv, 12)
    fake_provider.script(Reply(text="NEW SUMMARY"))
    assert summaries.summarize(conv.pk) is True
    asked = summary_requests(fake_provider)[0].json["messages"][1]["content"]
    assert asked.startswith("Summary so far:\nOLD SUMMARY of the first turns.")
    assert summary_now(conv).text == "NEW SUMMARY" and summary_now(conv).through_id > conv.messages.order_by("id")[3].pk


def test_it_folds_a_long_backlog_in_requests_that_each_fit_the_budget(alice, fake_provider):
    # 120 turns of ~44 tokens, budget 2000: one request for the whole backlog would not fit.
    conv = tiny_conversation(alice, budget=2000, turns=120, words=10)
    fake_provider.default = Reply(text="Rolling summary so far.")
    try:
        assert summaries.summarize(conv.pk) is True
    finally:
        fake_provider.default = Reply()
    requests = summary_requests(fake_provider)
    assert len(requests) > 1
    for r in requests:
        body = r.json["messages"]
        assert sum(estimate_tokens(m["content"]) + 4 for m in body) <= 2000
        assert r.json.get("max_completion_tokens", r.json.get("max_tokens")) == 500
    conv.refresh_from_db()
    assert not summaries.needs_summary(conv)


def test_it_trims_the_oldest_turns_before_a_summary_exists_never_the_latest_message(alice):
    conv = tiny_conversation(alice, budget=200, turns=12)
    latest = add_message(conv, role="user", content="newest question " * 150)
    reply = add_message(conv, role="assistant", status="streaming", model="offline:demo")
    request = build_chat_request(reply.pk)
    assert request.messages == [{"role": "user", "content": latest.content}]  # over budget alone, still sent
    latest.content = "newest question"
    latest.save()
    request = build_chat_request(reply.pk)
    assert request.messages[-1] == {"role": "user", "content": "newest question"}
    assert 1 < len(request.messages) < 13 and request.messages[0]["role"] == "user"
    assert estimate_tokens(request.system) + sum(estimate_tokens(m["content"]) + 4 for m in request.messages) <= 200


def test_it_queues_one_summary_and_one_title_however_many_replies_finish(alice):
    conv = tiny_conversation(alice, budget=200, turns=12)
    Conversation.objects.filter(pk=conv.pk).update(title_is_auto=True)
    after_reply(conv.pk)
    after_reply(conv.pk)
    assert summary_tasks(conv.pk, status="READY").count() == 1
    titles = DBTaskResult.objects.filter(task_path=title_conversation.module_path, args_kwargs__args__0=str(conv.pk))
    assert titles.count() == 1


def test_it_queues_no_summary_while_the_history_is_short(alice):
    conv = tiny_conversation(alice, budget=2000, turns=6)
    after_reply(conv.pk)
    assert not summary_tasks(conv.pk).exists()


@pytest.mark.parametrize("page", [3, 50])
def test_requests_and_summary_checks_read_only_the_newest_turns_yet_decide_as_the_whole_history(
    alice, monkeypatch, page
):
    """`recent_turns` reads a long thread newest first, a page at a time, until the budget is passed:
    the request and the summary decision equal those made from every turn, and the rows read do not
    grow with the thread."""
    from django.test.utils import CaptureQueriesContext

    from conversations import selectors
    from conversations.context import due_for_summary, fit_turns, history_tokens, system_text

    monkeypatch.setattr(selectors, "RECENT_PAGE", page)  # small pages: the stopping point is exact
    skipped, needed = set(), set()
    for budget in (150, 600, 2500, 100_000):
        persona = make_persona(f"tiny-{budget}", context_budget_tokens=budget, system_prompt="Be brief.")
        conv = make_conversation(alice, persona, title_is_auto=False)
        # Turns of very different lengths, an empty failed reply among them.
        for i in range(240):
            role = "user" if i % 2 == 0 else "assistant"
            content = "" if i == 101 else " ".join(f"w{i}x{j}" for j in range((i * 7) % 40 + 1))
            add_message(conv, role=role, content=content, output_tokens=None)
        reply = add_message(conv, role="assistant", status="streaming", model="offline:demo")
        system = system_text(conv.persona.system_prompt, "")
        everything = history_turns(path_history(conv, leaf_id=reply.pk, include_leaf=False))
        expected = fit_turns(system, everything, budget)
        with CaptureQueriesContext(connection) as read:
            request, followups = build_for_reply(reply.pk)
        # The request is the newest stretch of the whole history, within the budget, starting with a
        # user turn: what fit_turns keeps, or less where a stable cut point (for the prompt cache) is.
        kept = everything[len(everything) - len(request.messages) :]
        assert request.messages == [{"role": t.role, "content": t.content} for t in kept]
        assert kept == expected[len(expected) - len(kept) :] and (len(kept) == 1 or kept[0].role == "user")
        assert len(kept) == 1 or history_tokens(system, kept) <= budget
        if budget < 1000 and page == 50:
            # The reply, the path's ids, its summaries, then one or two pages of 50.
            assert len(read.captured_queries) <= 5
        Message.objects.filter(pk=reply.pk).update(status="complete", content="done")
        conv.refresh_from_db()
        whole = history_turns(path_history(conv))
        assert summaries.needs_summary(conv) == due_for_summary(system, whole, budget)
        # The end of the reply skips the summary check only when no summary can be due.
        if not followups.may_need_work(estimate_tokens("done")):
            assert not summaries.needs_summary(conv)
            skipped.add(budget)
        if summaries.needs_summary(conv):
            assert followups.may_need_work(estimate_tokens("done"))
            needed.add(budget)
    assert skipped and needed, (skipped, needed, followups)  # both cases were seen
