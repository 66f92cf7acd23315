"""The migration that turns the first round's hidden messages into versions: nothing is lost."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("conversations", "0005_message_tree")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def test_hidden_edits_and_regenerations_become_earlier_versions():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    old = migrate(BEFORE)
    try:
        User = old.get_model("auth", "User")
        Persona = old.get_model("conversations", "Persona")
        Conversation = old.get_model("conversations", "Conversation")
        Message = old.get_model("conversations", "Message")
        user = User.objects.create(username="old-timer")
        persona = Persona.objects.create(name="P", slug="p-migration")
        conv = Conversation.objects.create(owner=user, persona=persona, summary="old summary")

        def msg(role, content, hidden=False):
            return Message.objects.create(conversation=conv, role=role, content=content, hidden=hidden)

        # u1 a1, then u1 edited (u1, a1 hidden) -> u1b a1b; a1b regenerated twice (hidden) -> a1d;
        # then u2 a2 on the visible path.
        u1, a1 = msg("user", "u1", True), msg("assistant", "a1", True)
        u1b, a1b, a1c, a1d = (
            msg("user", "u1b"),
            msg("assistant", "a1b", True),
            msg("assistant", "a1c", True),
            msg("assistant", "a1d"),
        )
        u2, a2 = msg("user", "u2"), msg("assistant", "a2")
        Conversation.objects.filter(pk=conv.pk).update(summary_through=a1d.pk)
    finally:
        new = migrate(latest)
    Message = new.get_model("conversations", "Message")
    Conversation = new.get_model("conversations", "Conversation")
    Summary = new.get_model("conversations", "Summary")
    parent = dict(Message.objects.filter(conversation_id=conv.pk).values_list("id", "parent_id"))
    assert len(parent) == 8  # nothing lost
    assert parent[u1.pk] is None and parent[u1b.pk] is None  # the edit is a sibling of the first message
    assert parent[a1.pk] == u1.pk
    assert parent[a1b.pk] == parent[a1c.pk] == parent[a1d.pk] == u1b.pk  # three versions of the reply
    assert parent[u2.pk] == a1d.pk and parent[a2.pk] == u2.pk
    conv = Conversation.objects.get(pk=conv.pk)
    assert conv.active_leaf_id == a2.pk
    active_child = dict(Message.objects.filter(conversation_id=conv.pk).values_list("id", "active_child_id"))
    assert active_child[u1b.pk] == a1d.pk and active_child[a1d.pk] == u2.pk and active_child[u1.pk] == a1.pk
    [summary] = Summary.objects.filter(conversation_id=conv.pk)
    assert (summary.through_id, summary.text) == (a1d.pk, "old summary")
