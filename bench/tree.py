"""How the conversation page scales with the length of its active path and the number of branches
(docs/performance.md, "The conversation tree").

    .venv/bin/python -m bench.tree                      # a fresh SQLite database in a temporary directory
    DATABASE_URL=postgres://... .venv/bin/python -m bench.tree

For paths of 10 and 1,000 messages, each alone and with 200 other branches around it, prints the
median time of loading the path (the two queries of `selectors.active_path`) and of the whole page
(`GET /conversations/<uuid>/`, warm rendering cache), and the page's query count.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

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
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from conversations import selectors
    from conversations.models import Conversation, Message, Persona

    user = get_user_model().objects.create_user("bench-tree", password="x")
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

    def median_ms(fn) -> float:
        fn()  # warm: the rendering cache, the connection
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    print(f"database: {connection.vendor}; {RUNS} runs each, median")
    print(f"{'path':>6} {'branches':>8} {'path load ms':>13} {'page ms':>9} {'queries':>8}")
    results = {}
    for length in (10, 1000):
        for branches in (0, BRANCHES):
            conv = thread(length, branches)
            load = median_ms(lambda conv=conv: selectors.active_path(conv))
            url = conv.get_absolute_url()
            page = median_ms(lambda url=url: client.get(url))
            with CaptureQueriesContext(connection) as queries:
                response = client.get(url)
            assert response.status_code == 200
            assert len(selectors.active_path(conv)) == length
            results[(length, branches)] = (load, page, len(queries.captured_queries))
            print(f"{length:>6} {branches:>8} {load:>13.2f} {page:>9.1f} {len(queries.captured_queries):>8}")
    for branches in (0, BRANCHES):
        short, long = results[(10, branches)], results[(1000, branches)]
        print(
            f"branches={branches}: 1,000 vs 10 messages: path load x{long[0] / short[0]:.2f}, "
            f"page x{long[1] / short[1]:.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
