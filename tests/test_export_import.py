"""Export (Markdown, JSON, the account's ZIP) and import (this site's files, ChatGPT's, Claude's)."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from decimal import Decimal
from pathlib import Path

import pytest
from django.urls import reverse

from accounts import importing, paths
from accounts.models import ImportJob
from conversations.models import Attachment, Conversation, Message
from tests.factories import add_message, make_conversation, make_turns

pytestmark = pytest.mark.django_db
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings, tmp_path):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MEDIA_ROOT = tmp_path / "media"


def upload(client, name: str, data: bytes):
    f = io.BytesIO(data)
    f.name = name
    return client.post(reverse("account_import"), {"file": f})


def tree_of(conversation: Conversation) -> list[tuple]:
    """The conversation as comparable rows: parents by position, not by id (ids differ after import)."""
    rows = list(paths.tree(conversation))
    position = {m.pk: i for i, (m, _) in enumerate(rows)}
    return [
        (
            None if parent is None else position[parent],
            m.role,
            m.content,
            m.status,
            m.model,
            m.created_at,
            m.input_tokens,
            m.output_tokens,
            m.cached_input_tokens,
            m.cost,
        )
        for m, parent in rows
    ]


def active_texts(conversation: Conversation) -> list[str]:
    return [m.content for m in paths.active_path(conversation)]


def a_thread(owner):
    conv = make_conversation(owner, title="Plans for the *weekend*", title_is_auto=False)
    turns = make_turns(conv, 6)
    Message.objects.filter(pk=turns[1].pk).update(
        model="openai:gpt-4o-mini", input_tokens=12, output_tokens=34, cached_input_tokens=8, cost=Decimal("0.0001234")
    )
    Message.objects.filter(pk=turns[5].pk).update(status=Message.Status.STOPPED, content="partly <b>written</b>")
    Message.objects.filter(pk=turns[0].pk).update(created_at=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    return conv


def test_it_exports_the_active_path_as_markdown(client, alice):
    conv = a_thread(alice)
    client.force_login(alice)
    response = client.get(reverse("conversation_export_md", args=[conv.pk]))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/markdown")
    assert "attachment" in response["Content-Disposition"]
    text = b"".join(response.streaming_content).decode()
    assert text.startswith("# Plans for the *weekend*\n")
    assert text.count("## User") == 3 and text.count("## Assistant") == 3
    assert text.index("user0w0") < text.index("assistant1w0") < text.index("partly <b>written</b>")


def test_exports_name_a_messages_attachments(client, alice):
    conv = a_thread(alice)
    first = paths.active_path(conv).__next__()
    Attachment.objects.create(
        owner=alice, conversation=conv, message=first, name="plan.pdf", kind="pdf",
        content_type="application/pdf", size=1234, file="attachments/x/plan",
    )  # fmt: skip
    client.force_login(alice)
    text = b"".join(client.get(reverse("conversation_export_md", args=[conv.pk])).streaming_content).decode()
    assert "## User\n\n_Attached: plan.pdf_\n\nuser0w0" in text
    doc = json.loads(b"".join(client.get(reverse("conversation_export_json", args=[conv.pk])).streaming_content))
    assert doc["messages"][0]["attachments"] == [{"name": "plan.pdf", "content_type": "application/pdf", "size": 1234}]
    assert "attachments" not in doc["messages"][1]


def test_it_exports_the_tree_as_json_in_the_contracts_format(client, alice):
    conv = a_thread(alice)
    client.force_login(alice)
    response = client.get(reverse("conversation_export_json", args=[conv.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    doc = json.loads(b"".join(response.streaming_content))
    assert {"id", "title", "persona", "created_at", "messages"} <= set(doc)
    assert doc["id"] == str(conv.pk) and doc["title"] == "Plans for the *weekend*" and doc["persona"] == "assistant"
    first, second = doc["messages"][:2]
    assert set(first) == {"id", "parent_id", "role", "content", "status", "model", "created_at", "usage"}
    assert first["parent_id"] is None and second["parent_id"] == first["id"]
    assert first["created_at"].startswith("2024-01-02T03:04:05")
    assert second["model"] == "openai:gpt-4o-mini"
    assert second["usage"] == {
        "input_tokens": 12,
        "output_tokens": 34,
        "cached_input_tokens": 8,
        "cache_write_tokens": None,
        "cost": "0.00012340",
    }
    assert doc["messages"][-1]["status"] == "stopped"


def test_export_json_then_import_gives_an_identical_tree(client, alice):
    conv = a_thread(alice)
    client.force_login(alice)
    exported = b"".join(client.get(reverse("conversation_export_json", args=[conv.pk])).streaming_content)
    response = upload(client, "thread.json", exported)
    assert response.status_code == 302
    copy = Conversation.objects.filter(owner=alice).exclude(pk=conv.pk).get()
    assert copy.title == conv.title and copy.persona_id == conv.persona_id
    assert tree_of(copy) == tree_of(conv)
    assert active_texts(copy) == active_texts(conv)
    # And the copy exports the same document, but for its ids.
    again = json.loads(b"".join(client.get(reverse("conversation_export_json", args=[copy.pk])).streaming_content))
    original = json.loads(exported)
    strip = lambda d: [{k: v for k, v in m.items() if k not in ("id", "parent_id")} for m in d["messages"]]  # noqa: E731
    assert strip(again) == strip(original)


def a_tree(owner):
    """A thread with an edited first question and a regenerated reply: three leaves, the middle one active."""
    conv = make_conversation(owner, title="Branches")
    q1 = add_message(conv, "user", "first question")
    a1 = add_message(conv, "assistant", "first answer", model="openai:gpt-4o-mini", input_tokens=5, output_tokens=7)
    add_message(conv, "user", "follow-up")
    Message.objects.create(conversation=conv, role="assistant", content="regenerated answer", parent=q1)
    edited = Message.objects.create(conversation=conv, role="user", content="edited question")
    Message.objects.create(conversation=conv, role="assistant", content="answer to the edit", parent=edited)
    conv.refresh_from_db()  # the active path: the first question, its first answer, the follow-up
    assert a1.parent_id == q1.pk
    return conv


def shape(conversation: Conversation) -> set[tuple]:
    """The tree as (parent's content, content) pairs: independent of ids."""
    content = dict(Message.objects.filter(conversation=conversation).values_list("id", "content"))
    return {(content.get(m.parent_id), m.content) for m in Message.objects.filter(conversation=conversation)}


def test_export_json_then_import_keeps_every_branch_and_the_active_path(client, alice):
    conv = a_tree(alice)
    client.force_login(alice)
    exported = b"".join(client.get(reverse("conversation_export_json", args=[conv.pk])).streaming_content)
    assert len(json.loads(exported)["messages"]) == 6
    assert upload(client, "tree.json", exported).status_code == 302
    copy = Conversation.objects.filter(owner=alice).exclude(pk=conv.pk).get()
    assert shape(copy) == shape(conv) and len(shape(copy)) == 6
    assert tree_of(copy) == tree_of(conv)
    assert active_texts(copy) == active_texts(conv) == ["first question", "first answer", "follow-up"]
    # The page shows the imported thread's active path, with its versions.
    page = client.get(copy.get_absolute_url()).content.decode()
    assert "follow-up" in page and "regenerated answer" not in page and "edited question" not in page


def test_the_account_zip_holds_every_thread_and_imports_back(client, alice, bob):
    mine = [a_thread(alice), make_conversation(alice, title="Second")]
    make_turns(mine[1], 2)
    make_turns(make_conversation(bob, title="Bob's"), 2)
    client.force_login(alice)
    response = client.get(reverse("account_export"))
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert response.streaming
    data = b"".join(response.streaming_content)
    names = sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert names == sorted([f"{c.pk}.json" for c in mine] + [f"{c.pk}.md" for c in mine])
    assert b"Bob's" not in data
    Conversation.objects.filter(owner=alice).delete()
    assert upload(client, "export.zip", data).status_code == 302
    titles = sorted(Conversation.objects.filter(owner=alice).values_list("title", flat=True))
    assert titles == ["Plans for the *weekend*", "Second"]
    assert Message.objects.filter(conversation__owner=alice).count() == 8


def test_a_chatgpt_export_imports_with_its_branches_and_current_node(client, alice):
    client.force_login(alice)
    response = upload(client, "conversations.json", (FIXTURES / "chatgpt_conversations.json").read_bytes())
    assert response.status_code == 302
    conv = Conversation.objects.get(owner=alice)
    assert conv.title == "Sourdough starter help"
    assert conv.created_at == dt.datetime.fromtimestamp(1717000000.123456, tz=dt.UTC)
    # current_node (a-2c) made the active path: the regenerated reply, then the edited question.
    assert active_texts(conv) == [
        "My starter smells like acetone. Is it dead?",
        "Acetone means the yeast ran out of food. Discard half and feed it.",
        "What ratio of flour to water, by weight?",
        "By weight, **1:1:1** starter, flour, water.",
    ]
    stored = {m.content: m for m in Message.objects.filter(conversation=conv)}
    # Both branches kept; the system message, the tool call and the tool's answer dropped.
    assert len(stored) == 8
    assert "No, it is **hungry**. Feed it twice a day." in stored  # the first reply, before regenerating
    assert "What ratio of flour to water?" in stored  # the question before it was edited
    assert "Equal weights: 1:1." in stored
    assert not any("search(" in text or "100% hydration" in text for text in stored)
    assert stored["How much flour?"].created_at == dt.datetime.fromtimestamp(1717000030, tz=dt.UTC)
    assert stored["Equal weights: 1:1."].model == "openai:gpt-4o"
    assert_branches(conv)


def assert_branches(conv):
    """The tree's shape: siblings where ChatGPT had them."""
    by_text = {m.content: m for m in Message.objects.filter(conversation=conv)}
    first = by_text["My starter smells like acetone. Is it dead?"]
    replies = Message.objects.filter(parent=first)
    assert sorted(r.content[:5] for r in replies) == ["Aceto", "No, i"]
    regenerated = by_text["Acetone means the yeast ran out of food. Discard half and feed it."]
    assert Message.objects.filter(parent=regenerated).count() == 2
    assert by_text["Equal weights: 1:1."].parent == by_text["What ratio of flour to water?"]


def test_a_claude_export_imports(client, alice):
    client.force_login(alice)
    response = upload(client, "conversations.json", (FIXTURES / "claude_conversations.json").read_bytes())
    assert response.status_code == 302
    conv = Conversation.objects.get(owner=alice)
    assert conv.title == "Haiku about tea"
    assert active_texts(conv) == [
        "Write a haiku about green tea.",
        "Steam over the cup\nthe leaves unfurl like spring fields\nquiet morning green",
    ]
    roles = list(Message.objects.filter(conversation=conv).order_by("id").values_list("role", flat=True))
    assert roles == ["user", "assistant"]
    assert conv.created_at == dt.datetime(2024, 6, 1, 9, 0, tzinfo=dt.UTC)


def test_chatgpt_and_claude_zips_are_read_from_their_conversations_json(client, alice):
    client.force_login(alice)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("conversations.json", (FIXTURES / "chatgpt_conversations.json").read_bytes())
        zf.writestr("chat.html", "<html></html>")
    assert upload(client, "chatgpt-export.zip", buffer.getvalue()).status_code == 302
    assert Conversation.objects.filter(owner=alice, title="Sourdough starter help").exists()


@pytest.mark.parametrize(
    ("name", "mangle", "reason"),
    [
        ("conversations.json", lambda b: b[: len(b) // 2], "is not valid JSON"),
        ("conversations.json", lambda b: b'{"hello": "world"}', "not an export this site knows"),
        ("conversations.json", lambda b: b"\xff\xfe\x00garbage", "not a text file in UTF-8"),
        ("empty.json", lambda b: b"", "The file is empty"),
        ("export.zip", lambda b: _zip_of(b)[:300], "ZIP cannot be read"),
        ("conversations.json", lambda b: b.replace(b'"parent": "u-1"', b'"parent": 7', 1), "parent that is not an id"),
        ("conversations.json", lambda b: b"[]", "holds no conversations"),
        ("one.json", lambda b: b'{"id": "x", "title": "t", "messages": []}', "no conversations with messages"),
    ],
)
def test_a_broken_or_foreign_file_imports_nothing_and_says_why(client, alice, name, mangle, reason):
    client.force_login(alice)
    good = (FIXTURES / "chatgpt_conversations.json").read_bytes()
    response = upload(client, name, mangle(good))
    assert response.status_code == 400
    page = response.content.decode()
    assert "Nothing was imported." in page and reason in page, page[:3000]
    assert not Conversation.objects.exists() and not Message.objects.exists()


def _zip_of(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.json", data)
        zf.writestr("b.json", data)
    return buffer.getvalue()


def test_one_bad_conversation_in_a_file_imports_none_of_it(client, alice):
    client.force_login(alice)
    doc = json.loads((FIXTURES / "chatgpt_conversations.json").read_text())
    broken = json.loads(json.dumps(doc[0]))
    broken["title"] = "The broken one"
    broken["mapping"]["u-2"]["message"]["create_time"] = "yesterday-ish"
    response = upload(client, "conversations.json", json.dumps([doc[0], broken]).encode())
    assert response.status_code == 400
    assert "Conversation 2 (“The broken one”)" in response.content.decode()
    assert not Conversation.objects.exists()


def test_a_failure_while_storing_rolls_back_the_whole_file(alice, monkeypatch):
    drafts = importing.parse("c.json", (FIXTURES / "claude_conversations.json").read_bytes()) * 3
    calls = []

    def failing_store(conversation, nodes, leaf):
        calls.append(conversation.pk)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return paths.store_tree(conversation, nodes, leaf)

    monkeypatch.setattr(importing, "store_tree", failing_store)
    with pytest.raises(RuntimeError):
        importing.store(owner=alice, drafts=drafts)
    assert len(calls) == 3 and not Conversation.objects.exists() and not Message.objects.exists()


def test_limits_on_size_and_count(client, alice, settings):
    client.force_login(alice)
    data = (FIXTURES / "chatgpt_conversations.json").read_bytes()
    settings.ACCOUNT_IMPORT_MAX_MESSAGES = 7
    response = upload(client, "conversations.json", data)
    assert response.status_code == 400 and "holds 8 messages; at most 7" in response.content.decode()
    settings.ACCOUNT_IMPORT_MAX_MESSAGES = 1000
    settings.ACCOUNT_IMPORT_MAX_CONVERSATIONS = 1
    doc = json.loads(data)
    response = upload(client, "conversations.json", json.dumps(doc * 2).encode())
    assert response.status_code == 400 and "holds 2 conversations; at most 1" in response.content.decode()
    settings.ACCOUNT_IMPORT_MAX_MB = 0
    response = upload(client, "conversations.json", data)
    assert response.status_code == 400 and "larger than the 0 MB" in response.content.decode()
    assert not Conversation.objects.exists()


def test_a_large_file_is_imported_by_the_worker_with_progress(
    client, alice, settings, django_capture_on_commit_callbacks
):
    from django_tasks_db.models import DBTaskResult

    from accounts.tasks import run_import

    settings.ACCOUNT_IMPORT_INLINE_KB = 0
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(client, "conversations.json", (FIXTURES / "chatgpt_conversations.json").read_bytes())
    assert response.status_code == 302
    job = ImportJob.objects.get(owner=alice)
    assert job.status == "queued" and not Conversation.objects.exists()
    queued = DBTaskResult.objects.get(task_path=run_import.module_path)
    assert queued.args_kwargs["args"] == [str(job.pk)]
    page = client.get(reverse("account_settings")).content.decode()
    assert "Waiting for the worker" in page and f'hx-get="/account/imports/{job.pk}/"' in page
    assert run_import.call(str(job.pk)) == "done"  # what the worker runs
    job.refresh_from_db()
    assert (job.status, job.done, job.total, job.path) == ("done", 1, 1, "")
    assert Conversation.objects.filter(owner=alice).count() == 1
    status = client.get(reverse("account_import_status", args=[job.pk])).content.decode()
    assert "Imported 1 conversation." in status and "hx-get" not in status


def test_an_import_whose_worker_died_says_so_and_stops_polling(client, alice):
    job = ImportJob.objects.create(owner=alice, filename="big.json", status="running")
    client.force_login(alice)
    assert "hx-get" in client.get(reverse("account_import_status", args=[job.pk])).content.decode()
    ImportJob.objects.filter(pk=job.pk).update(created_at=job.created_at - dt.timedelta(hours=2))
    status = client.get(reverse("account_import_status", args=[job.pk])).content.decode()
    assert "stopped without finishing: nothing was imported" in status and "hx-get" not in status


def test_a_large_broken_file_fails_in_the_worker_with_its_reason(client, alice, settings):
    from accounts.tasks import run_import

    settings.ACCOUNT_IMPORT_INLINE_KB = 0
    client.force_login(alice)
    upload(client, "conversations.json", b"[{" * 100)
    job = ImportJob.objects.get(owner=alice)
    run_import.call(str(job.pk))
    job.refresh_from_db()
    assert job.status == "failed" and "is not valid JSON" in job.error
    assert not Conversation.objects.exists()
    page = client.get(reverse("account_settings")).content.decode()
    assert "Nothing was imported." in page and "is not valid JSON" in page


def test_another_users_exports_are_404(client, alice, bob):
    conv = a_thread(alice)
    client.force_login(bob)
    for name in ("conversation_export_md", "conversation_export_json"):
        response = client.get(reverse(name, args=[conv.pk]))
        assert response.status_code == 404 and b"weekend" not in response.content
    bobs_zip = b"".join(client.get(reverse("account_export")).streaming_content)
    assert zipfile.ZipFile(io.BytesIO(bobs_zip)).namelist() == []
