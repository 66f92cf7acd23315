"""The token economy: `python -m bench.token_economy [--turns 100] [--budgets 8000,4000,2000] [--write]`.

A scripted conversation (each user message and each reply about 60 words) runs through the real
code on a scratch SQLite database: `services.message_send` stores each message, `build_chat_request`
builds the request the provider would get, the reply is stored with its output-token count, and
`after_reply` + the real worker (`manage.py db_worker --batch`) summarize when due, calling the fake
provider server (the real openai SDK) which answers every summary with a scripted ~180-word text.

For each budget it counts, request by request, the input tokens sent with summaries (chat requests,
plus the summary requests themselves) against resending the whole history every turn (the seed's
loop), and the largest single request of each. Counts are the site's own estimate
(`conversations.context.estimate_tokens`); with the `bpe-openai` package importable, the same
requests are also counted with OpenAI's o200k_base tokenizer. `--write` puts the table into
docs/performance.md under "## Token economy".
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_VOCABULARY = (
    "the a to of and in that is for it with as on be this by are or from at an we can which have "
    "not project budget model token request reply summary history thread persona worker database "
    "server message user assistant cost latency context window provider estimate number data plan "
    "test result question answer idea change design code function class value error retry stream "
    "page time week team price customer order report chart table query index cache queue deploy "
    "review release note garden recipe travel train city river mountain book chapter music concert "
    "weather morning evening"
)
WORDS = _VOCABULARY.split()
SUMMARY_TEXT = " ".join(
    ["The user and the assistant have been discussing a long list of numbered topics."]
    + [f"Point {i}: the user asked about item {i} and the assistant explained its cost and design." for i in range(12)]
)


def sentence_words(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    text, out = [], []
    for i, w in enumerate(words, 1):
        out.append(w)
        if i % rng.randint(9, 14) == 0 or i == n:
            sentence = " ".join(out)
            text.append(sentence[0].upper() + sentence[1:] + ".")
            out = []
    return " ".join(text)


def script(turns: int, seed: int = 7) -> list[tuple[str, str]]:
    """(user message, reply) pairs of about 60 words each, numbered so every turn is distinct."""
    rng = random.Random(seed)
    return [
        (
            f"Turn {i}: " + sentence_words(rng, rng.randint(55, 65)),
            f"Reply {i}: " + sentence_words(rng, rng.randint(55, 65)),
        )
        for i in range(turns)
    ]


# The providers' published prompt-cache rules, applied to the site's token estimates.
CACHE_MIN = 1024  # both: shorter prefixes are not cached
OPENAI_STEP = 128  # OpenAI: cached tokens come in 128-token steps above the minimum
ANTHROPIC_WRITE, ANTHROPIC_READ = 1.25, 0.10  # Anthropic: x the input price
# OpenAI's cached-input price as a share of its input price: gpt-4o-mini (the default model) and gpt-5.
OPENAI_CACHED = {"gpt-4o-mini": 0.5, "gpt-5": 0.1}


@dataclass
class CacheSim:
    """Billed input (in units of the input price) of a stream of chat requests under each provider's
    cache rules: a request's cacheable prefix is the whole messages it shares with the previous one."""

    previous: list[tuple[str, str, int]] = field(default_factory=list)
    openai_cached: int = 0
    anthropic_read: int = 0
    anthropic_write: int = 0
    uncached: int = 0  # Anthropic's input neither read nor written (requests under the minimum)
    total: int = 0
    hits: int = 0

    def observe(self, messages: list[tuple[str, str, int]]) -> None:
        total = sum(t for _, _, t in messages)
        common = 0
        for old, new in zip(self.previous, messages, strict=False):
            if old != new:
                break
            common += new[2]
        self.total += total
        if total >= CACHE_MIN and common >= CACHE_MIN:
            self.openai_cached += CACHE_MIN + (common - CACHE_MIN) // OPENAI_STEP * OPENAI_STEP
        # Anthropic: the breakpoint on the last turn wrote the previous request whole; this one
        # reads it back if it is a prefix, and writes the rest.
        previous_total = sum(t for _, _, t in self.previous)
        if total >= CACHE_MIN:
            read = previous_total if common == previous_total and previous_total >= CACHE_MIN else 0
            self.anthropic_read += read
            self.anthropic_write += total - read
            self.hits += read > 0
        else:
            self.uncached += total
        self.previous = messages

    def openai_billed(self, cached_share: float) -> float:
        return self.total - self.openai_cached + self.openai_cached * cached_share

    def anthropic_billed(self) -> float:
        return self.uncached + self.anthropic_write * ANTHROPIC_WRITE + self.anthropic_read * ANTHROPIC_READ


@dataclass
class Result:
    budget: int
    requests: list[int] = field(default_factory=list)  # estimated input tokens of each chat request
    naive: list[int] = field(default_factory=list)  # the whole history resent, each turn
    requests_o200k: list[int] = field(default_factory=list)
    naive_o200k: list[int] = field(default_factory=list)
    summary_in: int = 0
    summary_out: int = 0
    summary_calls: int = 0
    largest_summary_request: int = 0
    seconds: float = 0.0
    cache: CacheSim = field(default_factory=CacheSim)


def run(budget: int, pairs: list[tuple[str, str]], provider, o200k) -> Result:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from conversations import services
    from conversations.context import MESSAGE_OVERHEAD, SUMMARY_SYSTEM, estimate_tokens
    from conversations.history import build_chat_request
    from conversations.models import Persona
    from conversations.tasks import after_reply

    def estimate(system: str, messages: list[dict[str, str]]) -> int:
        return (
            estimate_tokens(system)
            + MESSAGE_OVERHEAD
            + sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD for m in messages)
        )

    def real(system: str, messages: list[dict[str, str]]) -> int:
        return (
            len(o200k.encode(system))
            + sum(len(o200k.encode(m["content"])) for m in messages)
            + MESSAGE_OVERHEAD * (1 + len(messages))
        )

    user = get_user_model().objects.create_user(username=f"bench-{uuid.uuid4().hex[:8]}")
    persona = Persona.objects.create(
        name=f"Bench {budget}",
        slug=f"bench-{budget}-{uuid.uuid4().hex[:6]}",
        system_prompt="You are a helpful, concise assistant. Use markdown where it helps.",
        model="openai:gpt-bench",
        context_budget_tokens=budget,
    )
    conversation = services.conversation_create(owner=user, persona=persona)
    conversation.title_is_auto = False  # titles are one small call per thread: not part of this question
    conversation.save(update_fields=["title_is_auto"])
    result = Result(budget)
    history: list[dict[str, str]] = []
    started = time.perf_counter()
    for text, reply_text in pairs:
        sent = services.message_send(conversation=conversation, client_id=uuid.uuid4(), content=text)
        assert sent.reply is not None
        request = build_chat_request(sent.reply.pk)
        history.append({"role": "user", "content": text})
        result.requests.append(estimate(request.system, request.messages))
        parts = [("system", request.system), *((m["role"], m["content"]) for m in request.messages)]
        result.cache.observe([(role, text, estimate_tokens(text) + MESSAGE_OVERHEAD) for role, text in parts])
        result.naive.append(estimate(persona.system_prompt, history))
        if o200k is not None:
            result.requests_o200k.append(real(request.system, request.messages))
            result.naive_o200k.append(real(persona.system_prompt, history))
        services.reply_finish(
            reply_id=sent.reply.pk,
            content=reply_text,
            status="complete",
            input_tokens=result.requests[-1],
            output_tokens=estimate_tokens(reply_text),
        )
        history.append({"role": "assistant", "content": reply_text})
        seen = len(provider.requests)
        after_reply(conversation.pk)
        call_command("db_worker", "--batch", "--no-startup-delay", "--no-reload", verbosity=0)
        for r in provider.requests[seen:]:
            body = r.json["messages"]
            if body and body[0].get("content") == SUMMARY_SYSTEM:
                size = estimate(body[0]["content"], body[1:])
                result.summary_calls += 1
                result.summary_in += size
                result.summary_out += estimate_tokens(SUMMARY_TEXT)
                result.largest_summary_request = max(result.largest_summary_request, size)
    result.seconds = time.perf_counter() - started
    return result


def mean_tail(sizes: list[int], n: int = 20) -> int:
    tail = sizes[-n:]
    return round(sum(tail) / len(tail))


def table(results: list[Result], turns: int, with_o200k: bool) -> str:
    naive = results[0]
    lines = [
        f"A scripted {turns}-turn conversation (a turn: a user message and a reply of about 60 words each, "
        f"~75 tokens), run through the real code: `build_chat_request` for every request, the real "
        f"`summarize_conversation` task in `db_worker`, the fake provider answering each summary with "
        f"~180 words. Token counts are the site's estimate. The totals with summaries include the input "
        f"of the summary requests; their output is in the last column.",
        "",
        "| history sent | total input tokens | vs. resending all | largest request | mean request, last 20 turns "
        "| summary calls | summary in / out |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| whole history every turn (no budget) | {sum(naive.naive):,} | 100% | {max(naive.naive):,} "
        f"| {mean_tail(naive.naive):,} | 0 | — |",
    ]
    for r in results:
        total = sum(r.requests) + r.summary_in
        lines.append(
            f"| budget {r.budget:,}, with summaries | {total:,} | {total / sum(naive.naive):.0%} | {max(r.requests):,} "
            f"| {mean_tail(r.requests):,} | {r.summary_calls} | {r.summary_in:,} / {r.summary_out:,} |"
        )
    if with_o200k:
        lines += [
            "",
            "The same chat requests counted with OpenAI's o200k_base tokenizer (summary requests not included; "
            "the `bpe-openai` package, not a project dependency, importable when the benchmark ran):",
            "",
            "| history sent | total input tokens (o200k) | largest request (o200k) |",
            "|---|---:|---:|",
            f"| whole history every turn | {sum(naive.naive_o200k):,} | {max(naive.naive_o200k):,} |",
        ]
        lines += [
            f"| budget {r.budget:,}, with summaries | {sum(r.requests_o200k):,} | {max(r.requests_o200k):,} |"
            for r in results
        ]
    base = sum(naive.naive)
    lines += [
        "",
        "Billed input with the providers' prompt caches (the same requests; the site keeps each request's "
        "prefix unchanged until a summary lands, Anthropic requests carry a `cache_control` breakpoint on "
        "their last turn, OpenAI requests a `prompt_cache_key` per conversation). Published rules: prefixes "
        f"of {CACHE_MIN:,} tokens and more; OpenAI caches automatically in {OPENAI_STEP}-token steps, cached "
        f"input at the model's cached price ({OPENAI_CACHED['gpt-4o-mini']:.0%} of input for gpt-4o-mini, "
        f"{OPENAI_CACHED['gpt-5']:.0%} for gpt-5); Anthropic writes at {ANTHROPIC_WRITE}x and reads at "
        f"{ANTHROPIC_READ}x the input price. Summary requests are billed whole (never cached). Costs are in "
        "input-token units (tokens x input price), against resending the whole history without a cache.",
        "",
        "| history sent | cache hits | OpenAI cached tokens | Anthropic read / written | billed, OpenAI gpt-4o-mini "
        "| billed, OpenAI gpt-5 | billed, Anthropic |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| whole history every turn, no cache | 0 | 0 | 0 / 0 | {base:,} (100%) | {base:,} (100%) | {base:,} (100%) |",
    ]
    for r in results:
        c = r.cache

        def pct(billed: float, summary_in: int = r.summary_in) -> str:
            total = billed + summary_in
            return f"{total:,.0f} ({total / base:.1%})"

        lines.append(
            f"| budget {r.budget:,}, with summaries | {c.hits} of {len(r.requests)} | {c.openai_cached:,} "
            f"| {c.anthropic_read:,} / {c.anthropic_write:,} | {pct(c.openai_billed(OPENAI_CACHED['gpt-4o-mini']))} "
            f"| {pct(c.openai_billed(OPENAI_CACHED['gpt-5']))} | {pct(c.anthropic_billed())} |"
        )
    over = [r.budget for r in results if max(r.requests) > r.budget]
    lines += [
        "",
        "No request went over its budget." if not over else f"Requests over budget: budgets {over}.",
        f"Reproduce: `.venv/bin/python -m bench.token_economy --turns {turns} "
        f"--budgets {','.join(str(r.budget) for r in results)} --write`.",
    ]
    return "\n".join(lines)


def write_section(body: str) -> None:
    """Replace (or add) the "## Token economy" section of docs/performance.md, and nothing else."""
    path = ROOT / "docs" / "performance.md"
    text = path.read_text() if path.exists() else "# Performance\n"
    section = f"## Token economy\n\n{body}\n"
    match = re.search(r"^## Token economy\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if match:
        text = text[: match.start()] + section + ("\n" if match.end() < len(text) else "") + text[match.end() :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--budgets", default="8000,4000,2000")
    parser.add_argument("--write", action="store_true", help="write the table into docs/performance.md")
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]

    sys.path.insert(0, str(ROOT))
    from tests.fakes.provider import FakeProvider, Reply

    try:
        import bpe_openai

        o200k = bpe_openai.get_encoding("o200k_base")
    except ImportError:
        o200k = None

    with tempfile.TemporaryDirectory() as tmp, FakeProvider(Reply(text=SUMMARY_TEXT)) as provider:
        os.environ.update(
            {
                "DJANGO_SETTINGS_MODULE": "chatsite.settings",
                "DATABASE_URL": f"sqlite:///{tmp}/economy.sqlite3",
                "OPENAI_API_KEY": "bench-key",
                "OPENAI_BASE_URL": provider.openai_base_url,
                "LOG_LEVEL": "WARNING",
                "CHAT_RATE_LIMIT": "100000/m",
                "CHAT_DAILY_TOKEN_QUOTA": "0",
            }
        )
        os.environ.pop("REDIS_URL", None)
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        pairs = script(args.turns)
        results = [run(budget, pairs, provider, o200k) for budget in budgets]
    body = table(results, args.turns, o200k is not None)
    print(body)
    for r in results:
        print(f"budget {r.budget}: {r.seconds:.1f}s", file=sys.stderr)
    if args.write:
        write_section(body)
        print("wrote docs/performance.md ## Token economy", file=sys.stderr)


if __name__ == "__main__":
    main()
