"""Today's linear threads become trees; hidden messages become earlier versions (nothing is lost).

Before the tree, an edit hid the last user message and what followed, then stored the new one;
a regenerate hid the replies after the last user message, then stored the new reply. So, in id
order: a reply's parent is the user message before it (its regenerations are siblings); a user
message whose previous user message is hidden is an edit of it (a sibling); any other user message
follows the last reply before it. The visible messages are the active path.
"""

from __future__ import annotations

from django.db import migrations


def build_tree(apps, schema_editor):
    Conversation = apps.get_model("conversations", "Conversation")
    Message = apps.get_model("conversations", "Message")
    Summary = apps.get_model("conversations", "Summary")
    for conversation in Conversation.objects.all().iterator():
        rows = list(
            Message.objects.filter(conversation=conversation).order_by("id").values("id", "role", "hidden")
        )
        parent: dict[int, int | None] = {}
        hidden = {r["id"]: r["hidden"] for r in rows}
        last_user: int | None = None
        last_reply: int | None = None  # the newest reply since `last_user`
        for r in rows:
            if r["role"] == "assistant":
                parent[r["id"]] = last_user
                last_reply = r["id"]
                continue
            if last_user is not None and hidden[last_user]:
                parent[r["id"]] = parent[last_user]
            else:
                parent[r["id"]] = last_reply if last_reply is not None else last_user
            last_user, last_reply = r["id"], None
        children: dict[int | None, list[int]] = {}
        for r in rows:
            children.setdefault(parent[r["id"]], []).append(r["id"])
        for r in rows:
            Message.objects.filter(pk=r["id"]).update(parent_id=parent[r["id"]])
        for pid, kids in children.items():
            if pid is None:
                continue
            visible = [k for k in kids if not hidden[k]]
            Message.objects.filter(pk=pid).update(active_child_id=(visible or kids)[-1])
        visible = [r["id"] for r in rows if not r["hidden"]]
        leaf = visible[-1] if visible else (rows[-1]["id"] if rows else None)
        if leaf is not None:
            # Down from the leaf's active children, in case the newest visible row is not the deepest.
            child_of = dict(Message.objects.filter(conversation=conversation).values_list("id", "active_child_id"))
            while child_of.get(leaf):
                leaf = child_of[leaf]
        Conversation.objects.filter(pk=conversation.pk).update(active_leaf_id=leaf)
        if conversation.summary.strip() and conversation.summary_through in hidden:
            Summary.objects.create(
                conversation=conversation, through_id=conversation.summary_through, text=conversation.summary
            )


def flatten(apps, schema_editor):
    """Back to one visible line: the active path stays visible, every other version is hidden."""
    Conversation = apps.get_model("conversations", "Conversation")
    Message = apps.get_model("conversations", "Message")
    for conversation in Conversation.objects.all().iterator():
        parent_of = dict(Message.objects.filter(conversation=conversation).values_list("id", "parent_id"))
        path = set()
        node = conversation.active_leaf_id
        while node is not None:
            path.add(node)
            node = parent_of.get(node)
        Message.objects.filter(conversation=conversation).exclude(pk__in=path).update(hidden=True)
        summary = (
            apps.get_model("conversations", "Summary")
            .objects.filter(conversation=conversation, through_id__in=path)
            .order_by("-through_id")
            .first()
        )
        if summary is not None:
            Conversation.objects.filter(pk=conversation.pk).update(
                summary=summary.text, summary_through=summary.through_id
            )


class Migration(migrations.Migration):
    dependencies = [("conversations", "0005_message_tree")]
    operations = [migrations.RunPython(build_tree, flatten)]
