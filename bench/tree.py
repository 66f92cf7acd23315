"""How the conversation page scales with the length of its active path and the number of branches
(docs/performance.md, "The conversation tree").

    .venv/bin/python -m bench.tree                      # a fresh SQLite database in a temporary directory
    DATABASE_URL=postgres://... .venv/bin/python -m bench.tree

For paths of 10 and 1,000 messages, each alone and with 200 other branches around it, prints the
median time of loading the path (the one query of `page.load`: rows, versions, summary), of the whole
page (`GET /conversations/<uuid>/`, every message's rendering cached) and its query count, of the
page after each new turn (a question and its reply rendered afresh, the rest from the cache: the view
that follows every exchange), and of the first view with nothing cached (the median of 3).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
import uuid

RUNS = 15
BRANCHES = 200
REPLY = "Here is **markdown** with code:\n\n```python\nprint('hello {i}')\n```\n\n- one\n- two"


def main() -> None:
    tmp = tempfile.mkdtemp()
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{tmp}/bench.sqlite3")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    os.environ.setdefault("DEBUG", "true")
    os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from conversations import page, rendering
    from conversations.models import Conversation, Message, Persona

    # A name of its own each run, so that it can run again on the same database.
    user = get_user_model().objects.create_user(f"bench-tree-{uuid.uuid4().hex[:8]}", password="x")
    persona = Persona.objects.get(is_default=True)
    client = Client()
    client.force_login(user)

    def thread(length: int, branches: int) -> Conversation:
        conv = Conversation.objects.create(owner=user, persona=persona, title=f"{length}/{branches}")
        rows = Message.objects.bulk_create(
            Message(
                conversation=conv,
                role="user" if i % 2 == 0 else "assistant",
                content=f"Question {i}: how does it work?" if i % 2 == 0 else REPLY.format(i=i),
            )
            for i in range(length)
        )
        for above, below in zip(rows, rows[1:], strict=False):
            below.parent_id, above.active_child_id = above.pk, below.pk
        Message.objects.bulk_update(rows, ["parent_id", "active_child_id"], batch_size=500)
        # Other versions hanging off the path: regenerated replies and edited questions, with replies.
        extra = []
        for b in range(branches):
            at = rows[(b * 7) % (length - 1)]
            role = "user" if at.role == "assistant" else "assistant"
            extra.append(Message(conversation=conv, role=role, content=f"other version {b}", parent_id=at.pk))
        Message.objects.bulk_create(extra, batch_size=500)
        Conversation.objects.filter(pk=conv.pk).update(active_leaf_id=rows[-1].pk)
        conv.refresh_from_db()
        return conv

    def medians(fns: dict, before=lambda key: None, runs: int = RUNS) -> dict:
        """The median time of each function, the functions taking turns run by run in a new order each
        time, so that whatever else the machine does at a moment (and whatever the one before left
        behind) weighs on all of them alike."""
        times: dict = {key: [] for key in fns}
        for key, fn in fns.items():
            before(key)
            fn()  # warm: the rendering cache, the connection
        order = list(fns.items())
        for _ in range(runs):
            random.shuffle(order)
            for key, fn in order:
                before(key)
                start = time.perf_counter()
                fn()
                times[key].append((time.perf_counter() - start) * 1000)
        return {key: statistics.median(t) for key, t in times.items()}

    def new_turn(conv: Conversation) -> None:
        """A question and its reply at the end of the path, as a send and its finished reply leave it."""
        leaf = Conversation.objects.values_list("active_leaf_id", flat=True).get(pk=conv.pk)
        q = Message.objects.create(conversation=conv, role="user", content="One more question?", parent_id=leaf)
        a = Message.objects.create(conversation=conv, role="assistant", content=REPLY.format(i=0), parent=q)
        Message.objects.filter(pk=leaf).update(active_child_id=q.pk)
        Message.objects.filter(pk=q.pk).update(active_child_id=a.pk)
        Conversation.objects.filter(pk=conv.pk).update(active_leaf_id=a.pk)

    def forget(key) -> None:
        rendering._local.clear()
        cache.clear()

    shapes = [(length, branches) for length in (10, 1000) for branches in (0, BRANCHES)]
    convs = {shape: thread(*shape) for shape in shapes}
    urls = {shape: conv.get_absolute_url() for shape, conv in convs.items()}
    counts = {}
    for shape, url in urls.items():
        client.get(url)
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        counts[shape] = len(queries.captured_queries)
        assert response.status_code == 200
        assert response.content.count(b'class="msg msg-') == shape[0]
        assert len(page.load(convs[shape]).rows) == shape[0]
    load = medians({shape: (lambda conv=conv: page.load(conv)) for shape, conv in convs.items()})
    shown = medians({shape: (lambda url=url: client.get(url)) for shape, url in urls.items()})
    cold = medians({shape: (lambda url=url: client.get(url)) for shape, url in urls.items()}, forget, runs=3)
    turn = medians(
        {shape: (lambda url=url: client.get(url)) for shape, url in urls.items()}, lambda s: new_turn(convs[s])
    )

    print(f"database: {connection.vendor}; {RUNS} runs each, median (first view: 3 runs)")
    print(f"{'path':>6} {'branches':>8} {'path load ms':>13} {'page ms':>9} {'queries':>8}", end=" ")
    print(f"{'new turn ms':>12} {'first view ms':>14}")
    for s in shapes:
        print(f"{s[0]:>6} {s[1]:>8} {load[s]:>13.2f} {shown[s]:>9.1f} {counts[s]:>8} {turn[s]:>12.1f} {cold[s]:>14.0f}")
    for branches in (0, BRANCHES):
        short, long = (10, branches), (1000, branches)
        print(
            f"branches={branches}: 1,000 vs 10 messages: path load x{load[long] / load[short]:.2f}, "
            f"page x{shown[long] / shown[short]:.2f}, after a new turn x{turn[long] / turn[short]:.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
