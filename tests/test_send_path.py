"""What a send costs before its first token: its request is built in the trip to the database that
stored it, the same request the reply would build itself, and a reply's end writes without savepoints."""

from __future__ import annotations

import uuid

import pytest
from asgiref.sync import sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext

from attachments.services import attachment_upload
from conversations import services
from conversations.generation import prepare
from conversations.generation import reply as generation_reply
from conversations.generation.reply import Generation, _finish_row
from conversations.history import build_for_reply
from conversations.llm import Usage
from conversations.models import DailyUsage, Message, UsageRecord
from tests.conftest import open_socket
from tests.factories import make_conversation, make_turns
from tests.fakes.provider import Reply

pytestmark = pytest.mark.django_db(transaction=True)


def _send(conversation, content: str = "What is a heron?", attachments: list[str] | None = None) -> services.Sent:
    return services.message_send(
        conversation=conversation, client_id=uuid.uuid4(), content=content, attachments=attachments
    )


def test_a_send_builds_the_request_its_reply_would_build_without_reading_the_reply_back(alice):
    conv = make_conversation(alice)
    make_turns(conv, 6)
    sent = _send(conv)
    with CaptureQueriesContext(connection) as queries:
        prepared = prepare(sent.reply)
    assert prepared is not None
    request, followups, stop_asked = prepared
    assert (request, followups) == build_for_reply(sent.reply.pk)
    assert request.messages[-1] == {"role": "user", "content": "What is a heron?"}
    assert stop_asked is False
    # The path with its summaries and the reply's stop flag, its turns (each saying whether it has
    # files: none here, so no read of files); the reply's row is not read back.
    assert len(queries) == 2, [q["sql"] for q in queries.captured_queries]
    reply_table = sent.reply._meta.db_table
    assert not any(
        q["sql"].startswith(f'SELECT "{reply_table}"."id", "{reply_table}"."conversation_id"')
        and f"= {sent.reply.pk}" in q["sql"]
        for q in queries.captured_queries
    )


def test_a_stop_stored_before_the_build_is_carried_with_the_request(alice):
    conv = make_conversation(alice)
    sent = _send(conv)
    services.reply_stop_request(conversation_id=conv.pk)
    prepared = prepare(sent.reply)
    assert prepared is not None and prepared[2] is True


def test_a_path_with_files_is_left_to_the_reply_to_build(alice, settings, tmp_path):
    """Files are read from the storage, which must not hold the socket's one database thread."""
    settings.MEDIA_ROOT = tmp_path / "media"
    conv = make_conversation(alice)
    upload = attachment_upload(
        owner=alice, conversation=conv, upload=SimpleUploadedFile("notes.txt", b"The heron is grey.")
    )
    sent = _send(conv, "Read this", attachments=[str(upload.pk)])
    assert prepare(sent.reply) is None
    request, _ = build_for_reply(sent.reply.pk)
    assert "The heron is grey." in str(request.messages[-1]["content"])


def test_with_the_switch_off_the_reply_builds_its_own_request(alice, monkeypatch):
    monkeypatch.setattr(generation_reply, "BUILD_IN_SEND", False)
    sent = _send(make_conversation(alice))
    assert prepare(sent.reply) is None


async def test_a_build_that_fails_with_the_send_is_done_again_by_the_reply(alice, fake_provider, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the send's build broke")

    monkeypatch.setattr(generation_reply, "build_for", broken)
    fake_provider.script(Reply(text="Herons wade."))
    conv = await sync_to_async(make_conversation)(alice)
    ok, ws = await open_socket(alice, conv.pk)
    await ws.recv()
    await ws.send_message("What is a heron?")
    end = await ws.until("end")
    assert end["status"] == "complete" and end["content"] == "Herons wade."
    assert fake_provider.requests[-1].json["messages"][-1] == {"role": "user", "content": "What is a heron?"}
    await ws.close()


def test_a_reply_ends_in_one_transaction_without_savepoints_or_reading_its_row(alice):
    conv = make_conversation(alice)
    message_table = Message._meta.db_table
    for _ in range(2):  # the first reply of the day inserts the day's usage row, the second adds to it
        sent = _send(conv)
        generation = Generation(sent.reply, owner_id=alice.pk, siblings=())
        with CaptureQueriesContext(connection) as queries:
            stored = _finish_row(generation, "Herons wade.", "complete", Usage(12, 3), "", 15, (12, 3))
        assert stored is not None and stored.status == "complete" and stored.output_tokens == 3
        sqls = [q["sql"] for q in queries.captured_queries]
        assert not any("SAVEPOINT" in sql for sql in sqls), sqls
        # The price, then the row closed, the record and the day's row (BEGIN and COMMIT on SQLite).
        assert len(sqls) <= 6, sqls
        assert not any(sql.startswith("SELECT") and f'FROM "{message_table}"' in sql for sql in sqls), sqls
    assert Message.objects.get(pk=sent.reply.pk).status == "complete"
    day = DailyUsage.objects.get(user=alice)
    assert (day.calls, day.input_tokens, day.output_tokens) == (2, 24, 6)
    assert UsageRecord.objects.filter(user=alice, conversation=conv, persona=conv.persona).count() == 2


postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the one-statement end is PostgreSQL's (SQLite has no UPDATE in WITH)"
)


@postgresql_only
def test_on_postgresql_a_reply_ends_in_one_statement_after_its_price(alice):
    conv = make_conversation(alice)
    sent = _send(conv)
    generation = Generation(sent.reply, owner_id=alice.pk, siblings=())
    with CaptureQueriesContext(connection) as queries:
        stored = _finish_row(generation, "Herons wade.", "complete", Usage(12, 3), "", 15, (12, 3))
    assert stored is not None
    sqls = [q["sql"] for q in queries.captured_queries]
    # The health check's `SELECT 1` may come first; then the price, then everything else in one.
    sqls = [sql for sql in sqls if sql != "SELECT 1"]
    assert len(sqls) == 2 and sqls[1].startswith("WITH closed AS (UPDATE"), sqls
    assert not any(sql in ("BEGIN", "COMMIT") for sql in sqls), sqls


@postgresql_only
def test_on_postgresql_a_send_links_its_rows_and_updates_its_thread_in_one_statement(alice):
    conv = make_conversation(alice)
    _answered(_send(conv, "first"))
    with CaptureQueriesContext(connection) as queries:
        _send(conv, "second")
    message_table, conv_table = Message._meta.db_table, conv._meta.db_table
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith(("UPDATE", "WITH"))]
    assert len(updates) == 1, updates
    assert updates[0].startswith(f'WITH linked AS (UPDATE "{message_table}"'), updates
    assert f'UPDATE "{conv_table}" SET' in updates[0]


def _answered(sent: services.Sent) -> services.Sent:
    """The send's reply ended (as a stream's end would), so the thread takes the next send."""
    assert sent.reply is not None
    Message.objects.filter(pk=sent.reply.pk).update(status=Message.Status.COMPLETE, content="answer")
    return sent


def _sent_rows(conv) -> tuple[object, ...]:
    """What sends left: every message's place in the tree (as indexes in the order stored), and the
    thread's active leaf and title."""
    rows = Message.objects.filter(conversation=conv).order_by("id")
    messages = list(rows.values_list("role", "content", "parent_id", "active_child_id"))
    ids = list(rows.values_list("id", flat=True))
    conv.refresh_from_db()
    relative = [(role, content, _at(ids, parent), _at(ids, child)) for role, content, parent, child in messages]
    return relative, _at(ids, conv.active_leaf_id), conv.title


def _at(ids: list[int], pk: int | None) -> int | None:
    return None if pk is None else ids.index(pk)


@pytest.mark.parametrize("one_statement", [True, False])
def test_sends_leave_the_same_tree_with_the_link_and_update_in_one_statement_or_two(alice, monkeypatch, one_statement):
    """A first message, two that continue the path, an edit of the second (off the active path: its
    own path pointed at), and a new first message leave the same rows either way, as listed here."""
    monkeypatch.setattr(services, "ONE_STATEMENT_SEND", one_statement)
    conv = make_conversation(alice)
    _answered(_send(conv, "one"))
    second = _answered(_send(conv, "two"))
    _answered(_send(conv, "three"))
    edit_of = second.message.pk
    _answered(services.message_send(conversation=conv, client_id=uuid.uuid4(), content="two, edited", edit_of=edit_of))
    _answered(services.message_send(conversation=conv, client_id=uuid.uuid4(), content="again", parent_id=None))
    U, A = Message.Role.USER, Message.Role.ASSISTANT
    assert _sent_rows(conv) == (
        [
            (U, "one", None, 1),
            (A, "answer", 0, 6),  # its active child: the edit of "two" (below), the path it is on
            (U, "two", 1, 3),
            (A, "answer", 2, 4),
            (U, "three", 3, 5),
            (A, "answer", 4, None),
            (U, "two, edited", 1, 7),
            (A, "answer", 6, None),
            (U, "again", None, 9),
            (A, "answer", 8, None),
        ],
        9,
        "one",
    )


def _ended_rows(conv, sent) -> tuple[object, ...]:
    reply = Message.objects.filter(pk=sent.reply.pk).values(
        "content", "status", "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "cost",
        "error_code",
    ).get()  # fmt: skip
    records = list(
        UsageRecord.objects.filter(conversation=conv).values_list(
            "user_id", "persona_id", "message_id", "model", "kind", "calls", "input_tokens", "cached_input_tokens",
            "cache_write_tokens", "output_tokens", "estimated", "cost",
        )
    )  # fmt: skip
    days = list(
        DailyUsage.objects.filter(user=conv.owner).values_list(
            "day", "model", "persona_ref", "kind", "calls", "input_tokens", "cached_input_tokens",
            "cache_write_tokens", "output_tokens", "cost",
        )
    )  # fmt: skip
    return reply, records, days


@postgresql_only
@pytest.mark.parametrize("one_statement", [True, False])
def test_the_one_statement_end_stores_what_the_transaction_stores(alice, monkeypatch, one_statement):
    """The same two replies (the day's row inserted, then added to; a priced model; one closed twice),
    ended either way, leave the same rows: compared with the values the transaction's path wrote."""
    from decimal import Decimal

    from conversations.models import ChatModel

    monkeypatch.setattr(services, "ONE_STATEMENT_END", one_statement)
    ChatModel.objects.create(
        name="openai:priced", input_price=Decimal("2.5"), cached_input_price=Decimal("1.25"), output_price=Decimal("10")
    )
    conv = make_conversation(alice)
    got = []
    for usage, estimates in ((Usage(1200, 30, 200, 0), (0, 0)), (Usage(None, None), (40, 7))):
        sent = _send(conv)
        Message.objects.filter(pk=sent.reply.pk).update(model="openai:priced")
        generation = Generation(sent.reply, owner_id=alice.pk, siblings=())
        generation.model = "openai:priced"
        stored = _finish_row(generation, "Herons wade.", "complete", usage, "", 0, estimates)
        assert stored is not None
        assert _finish_row(generation, "again", "stopped", Usage(1, 1), "", 0, (1, 1)) is None  # closed already
        got.append(_ended_rows(conv, sent))
    reply, records, days = got[-1]
    assert (reply["status"], reply["content"], reply["input_tokens"]) == ("complete", "Herons wade.", None)
    assert [r[6:] for r in records] == [
        (1200, 200, 0, 30, False, Decimal("0.00305000")),  # 1000 fresh at 2.5, 200 cached at 1.25, 30 out at 10
        (40, 0, 0, 7, True, Decimal("0.00017000")),
    ]
    assert [r[:6] for r in records] == [(alice.pk, conv.persona_id, r[2], "openai:priced", "reply", 1) for r in records]
    assert [d[1:] for d in days] == [
        ("openai:priced", conv.persona_id, "reply", 2, 1240, 200, 0, 37, Decimal("0.00322000"))
    ]


def test_a_reply_closed_by_someone_else_is_not_recorded_again(alice):
    conv = make_conversation(alice)
    sent = _send(conv)
    generation = Generation(sent.reply, owner_id=alice.pk, siblings=())
    assert _finish_row(generation, "Herons", "stopped", Usage(), "", 0, (5, 1)) is not None
    assert _finish_row(generation, "Herons wade.", "complete", Usage(12, 3), "", 15, (12, 3)) is None
    reply = Message.objects.get(pk=sent.reply.pk)
    assert (reply.status, reply.content, reply.input_tokens) == ("stopped", "Herons", None)
    record = UsageRecord.objects.get(message=reply)
    assert (record.input_tokens, record.output_tokens, record.estimated) == (5, 1, True)
    assert DailyUsage.objects.get(user=alice).calls == 1


def test_a_sends_rows_are_stored_as_the_orm_stores_them(alice):
    """The send's plain INSERT stores every column as `bulk_create` would (defaults, `auto_now_add`,
    the thread's key), and gives each row its own key in order."""
    conv = make_conversation(alice)
    sent = _send(conv, "Where do herons nest?")
    message, reply = (Message.objects.get(pk=sent.message.pk), Message.objects.get(pk=sent.reply.pk))
    assert sent.message.pk < sent.reply.pk
    assert (message.conversation_id, message.role, message.content, message.status) == (
        conv.pk,
        "user",
        "Where do herons nest?",
        "complete",
    )
    assert (reply.parent_id, message.active_child_id, reply.status, reply.content) == (
        message.pk,
        reply.pk,
        "streaming",
        "",
    )
    assert message.created_at == sent.message.created_at and message.created_at is not None
    for field in Message._meta.concrete_fields:  # what the caller holds is what was stored
        if field.attname not in ("active_child_id", "parent_id"):
            assert getattr(sent.message, field.attname) == getattr(message, field.attname), field.name
            assert getattr(sent.reply, field.attname) == getattr(reply, field.attname), field.name


def test_a_row_read_in_any_order_of_its_columns_is_the_orms_row(alice):
    from conversations.models import ChatModel, from_row
    from conversations.pricing import _prices

    entry = ChatModel.objects.create(
        name="openai:heron-1", input_price="1.5", cached_input_price="0.25", output_price="6", cache_write_price=None
    )
    entry.refresh_from_db()
    prices = _prices("openai:heron-1")
    assert prices is not None and prices.pk == entry.pk
    assert (prices.input_price, prices.cached_input_price, prices.output_price, prices.cache_write_price) == (
        entry.input_price,
        entry.cached_input_price,
        entry.output_price,
        None,
    )
    assert _prices("openai:not-listed") is None
    names = ("output_price", "name", "id")  # not the model's order
    with connection.cursor() as cursor:
        columns = ", ".join(connection.ops.quote_name(n) for n in names)
        cursor.execute(f"SELECT {columns} FROM {ChatModel._meta.db_table} WHERE id = %s", [entry.pk])  # noqa: S608
        row = from_row(ChatModel, [ChatModel._meta.get_field(n) for n in names], cursor.fetchone())
    assert (row.pk, row.name, row.output_price) == (entry.pk, "openai:heron-1", entry.output_price)


@pytest.mark.parametrize("persona_model", ["openai:gpt-open", "openai:gpt-secret", "openai:gpt-retired", "", "x:y"])
@pytest.mark.parametrize("thread_model", ["", "openai:gpt-secret", "openai:gpt-unlisted"])
@pytest.mark.parametrize("choice", [True, False])
def test_the_locks_answer_on_the_threads_model_is_may_uses(alice, bob, settings, persona_model, thread_model, choice):
    """The send asks the registry nothing beyond its lock: the lock resolves the thread's model as
    `thread_model` does and answers as `may_use` does, for every kind of model and owner."""
    from django.contrib.auth.models import Group

    from conversations import pricing
    from conversations.models import ChatModel
    from tests.factories import make_persona

    settings.CHAT_DEFAULT_MODEL = "openai:gpt-open"
    insiders = Group.objects.create(name="insiders")
    alice.groups.add(insiders)
    ChatModel.objects.create(name="openai:gpt-open")
    ChatModel.objects.create(name="openai:gpt-secret").groups.add(insiders)
    ChatModel.objects.create(name="openai:gpt-retired", is_active=False)
    persona = make_persona("picky", model=persona_model, allow_model_choice=choice)
    for owner in (alice, bob):
        conv = make_conversation(owner, persona, model=thread_model)
        locked = services._lock(conv)
        spec, known = locked.model_use
        assert spec == pricing.thread_model(locked, persona)
        for listed_only in (True, False):
            assert pricing.may_use(owner.pk, spec, listed_only=listed_only, known=known) == pricing.may_use(
                owner.pk, spec, listed_only=listed_only
            ), (owner.username, spec, listed_only)
    with CaptureQueriesContext(connection) as queries:
        try:
            _send(make_conversation(bob, persona, model=thread_model))
        except services.ChatError as refused:
            assert refused.code == "invalid"
    table = ChatModel._meta.db_table
    assert sum(table in q["sql"] for q in queries.captured_queries) == 1, [q["sql"] for q in queries.captured_queries]
