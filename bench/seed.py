"""Bench data in the bench database: users with a session and a titled thread each, two threads of
10 and 1,000 prior messages, and a trigger that records every UPDATE of a message row.

Run by bench.run in a subprocess with the site's environment: `python -m bench.seed OUT.json --users N`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys

REPLY = (
    "Here is a short answer with **some markdown**:\n\n"
    "- first, the point that matters most here\n- second, a detail that follows from it\n\n"
    "```python\nprint('hello from turn {i}')\n```\n\nAnything else you would like to know about turn {i}?"
)

SQLITE_TRIGGER = [
    "CREATE TABLE IF NOT EXISTS bench_writes (id INTEGER PRIMARY KEY AUTOINCREMENT, message_id INTEGER NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS bench_count_writes AFTER UPDATE ON conversations_message FOR EACH ROW "
    "BEGIN INSERT INTO bench_writes(message_id) VALUES (NEW.id); END",
]
POSTGRES_TRIGGER = [
    # Unlogged and insert-only: counting never makes two transactions wait for each other.
    "CREATE UNLOGGED TABLE IF NOT EXISTS bench_writes (id bigserial PRIMARY KEY, message_id bigint NOT NULL)",
    "CREATE OR REPLACE FUNCTION bench_count_write() RETURNS trigger AS $$ BEGIN "
    "INSERT INTO bench_writes(message_id) VALUES (NEW.id); RETURN NULL; END $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS bench_count_writes ON conversations_message",
    "CREATE TRIGGER bench_count_writes AFTER UPDATE ON conversations_message "
    "FOR EACH ROW EXECUTE FUNCTION bench_count_write()",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--threads", default="10,1000", help="prior messages of the thread-length threads")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.db import connection, transaction
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    from conversations.models import Conversation, Message, Persona

    User = get_user_model()
    persona = Persona.objects.get(is_default=True)
    expires = timezone.now() + dt.timedelta(days=2)
    store = SessionStore()

    def make_users(prefix: str, count: int) -> list[dict[str, object]]:
        users = User.objects.bulk_create(
            [User(username=f"{prefix}{i}", email=f"{prefix}{i}@bench.invalid", password="!") for i in range(count)]
        )
        users = list(User.objects.filter(username__startswith=prefix).order_by("id"))
        convs = Conversation.objects.bulk_create(
            # Titled already: the worker would otherwise ask the model for a title after every first reply.
            [Conversation(owner=u, persona=persona, title=f"Bench {u.username}", title_is_auto=False) for u in users]
        )
        sessions = []
        for u in users:
            data = {
                SESSION_KEY: str(u.pk),
                BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
                HASH_SESSION_KEY: u.get_session_auth_hash(),
            }
            sessions.append(
                Session(session_key=get_random_string(32), session_data=store.encode(data), expire_date=expires)
            )
        Session.objects.bulk_create(sessions)
        return [
            {"user": u.pk, "session": s.session_key, "conversation": str(c.pk)}
            for u, c, s in zip(users, convs, sessions, strict=True)
        ]

    with transaction.atomic():
        out: dict[str, object] = {"users": make_users("bench", args.users)}
        threads = {}
        for n in [int(x) for x in args.threads.split(",") if x]:
            [info] = make_users(f"thread{n}_", 1)
            conv = Conversation.objects.get(pk=info["conversation"])
            rows = Message.objects.bulk_create(
                [
                    Message(
                        conversation=conv,
                        role=Message.Role.USER if i % 2 == 0 else Message.Role.ASSISTANT,
                        content=(
                            f"Question {i}: how does this part work, and what should I do next?"
                            if i % 2 == 0
                            else REPLY.format(i=i)
                        ),
                    )
                    for i in range(n)
                ]
            )
            # One path, root to leaf: each message answers the one before it.
            for above, below in zip(rows, rows[1:], strict=False):
                below.parent_id, above.active_child_id = above.pk, below.pk
            Message.objects.bulk_update(rows, ["parent_id", "active_child_id"], batch_size=500)
            Conversation.objects.filter(pk=conv.pk).update(active_leaf_id=rows[-1].pk if rows else None)
            threads[str(n)] = info
        out["threads"] = threads
        with connection.cursor() as cursor:
            for statement in SQLITE_TRIGGER if connection.vendor == "sqlite" else POSTGRES_TRIGGER:
                cursor.execute(statement)
    with open(args.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    sys.exit(main())
