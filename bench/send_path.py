"""What one send and one reply's end cost the server, alone: `python -m bench.send_path [--database-url URL]`.

Runs, in one thread of a scratch database (SQLite in a temporary directory, or `--database-url`, e.g.
an empty PostgreSQL database of its own), what the socket's database thread does for a `send` (the
session check, `services.message_send`, the request built by `generation.prepare`) and what a reply's
end does on its pool thread (`_finish_row`: `services.reply_finish`), each on a thread of its own with
4 earlier turns, and prints the medians of their wall time and of the thread's CPU time, and their
queries. No load beside it, so it measures the work itself; under load every round trip also waits for
the GIL (docs/performance.md). The CPU column is the steadier one on a shared machine.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import statistics
import time
import uuid

from .scratch import scratch_site


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--show-queries", action="store_true", help="print the last send's and end's statements")
    parser.add_argument("--profile", default="", help="cProfile the measured sends and ends, written to this path")
    args = parser.parse_args(argv)
    with scratch_site(args.database_url, "send.sqlite3", CHAT_RATE_LIMIT="1000000/m"):
        from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
        from django.contrib.sessions.backends.db import SessionStore
        from django.db import close_old_connections, connection
        from django.test.utils import CaptureQueriesContext

        from conversations import services, sockets
        from conversations.generation import prepare
        from conversations.generation.reply import Generation, _finish_row
        from conversations.llm import Usage
        from conversations.models import Conversation, Persona
        from tests.factories import make_turns, make_user

        takes_generation = next(iter(inspect.signature(_finish_row).parameters)) == "generation"
        user = make_user(f"send-{uuid.uuid4().hex[:8]}")
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.create()
        persona = Persona.objects.filter(is_active=True).first()
        total = args.warmup + args.sends
        threads = []
        for _ in range(total):
            conv = Conversation.objects.create(owner=user, persona=persona, title="A thread")
            make_turns(conv, 4)
            threads.append(conv)

        wall: dict[str, list[float]] = {"send": [], "end": []}
        cpu: dict[str, list[float]] = {"send": [], "end": []}
        queries: dict[str, int] = {}
        profiler = cProfile.Profile() if args.profile else None
        for i, conv in enumerate(threads):
            if profiler and i == args.warmup:
                profiler.enable()
            close_old_connections()
            connection.queries_log.clear()  # it keeps 9,000 at most, and the capture counts by its length
            with CaptureQueriesContext(connection) as sent_queries:
                w0, c0 = time.perf_counter(), time.thread_time()
                assert sockets.signed_in(store.session_key, user.pk)
                sent = services.message_send(conversation=conv, client_id=uuid.uuid4(), content=f"Question {i}?")
                assert sent.reply is not None and prepare(sent.reply) is not None
                w1, c1 = time.perf_counter(), time.thread_time()
            close_old_connections()
            # Before 2026-12-03 `_finish_row` took the reply's id and owner, not its generation: this
            # file (with scratch.py), copied into a worktree of an older commit, measures that commit as well.
            first = Generation(sent.reply, owner_id=user.pk, siblings=()) if takes_generation else sent.reply.pk
            rest = () if takes_generation else (user.pk,)
            with CaptureQueriesContext(connection) as end_queries:
                w2, c2 = time.perf_counter(), time.thread_time()
                _finish_row(first, *rest, "An answer. " * 30, "complete", Usage(400, 100, 0, 0), "", 500, (0, 0))
                w3, c3 = time.perf_counter(), time.thread_time()
            if i < args.warmup:
                continue
            wall["send"].append((w1 - w0) * 1000)
            cpu["send"].append((c1 - c0) * 1000)
            wall["end"].append((w3 - w2) * 1000)
            cpu["end"].append((c3 - c2) * 1000)
            queries = {"send": len(sent_queries), "end": len(end_queries)}

        if args.show_queries:
            for step, captured in (("send", sent_queries), ("end", end_queries)):
                for query in captured.captured_queries:
                    print(f"{step}: {query['sql'][:160]}")
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
        print(f"{connection.vendor}, {args.sends} sends (medians):")
        print("| step | wall ms | CPU ms | queries |")
        print("|---|---:|---:|---:|")
        labels = {"send": "a send and its request built", "end": "a reply's end"}
        for step, label in labels.items():
            print(
                f"| {label} | {statistics.median(wall[step]):.2f} | {statistics.median(cpu[step]):.2f} "
                f"| {queries[step]} |"
            )


if __name__ == "__main__":
    main()
