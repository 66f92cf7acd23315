"""Pure functions: persona + summary + turns -> the messages of one request, within its token budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Per-message framing the providers add (role markers, separators), in tokens.
MESSAGE_OVERHEAD = 4
SUMMARY_HEADING = "Summary of the earlier conversation (older messages are not repeated below):"


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: ~4 ASCII characters a token, one token per other character.

    English prose runs about 4 characters a token with OpenAI's and Anthropic's tokenizers;
    counting every non-ASCII character as a whole token keeps CJK and emoji from being
    underestimated. See docs/architecture.md for how far it can be off.
    """
    ascii_chars = sum(1 for ch in text if ch < "\x80")
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


@dataclass(frozen=True)
class Turn:
    """One stored message as history: its id, role, text, and its token count if known."""

    id: int
    role: str
    content: str
    tokens: int | None = None  # the provider's count (assistant output tokens), when stored

    def cost(self) -> int:
        return (self.tokens if self.tokens is not None else estimate_tokens(self.content)) + MESSAGE_OVERHEAD


def system_text(system_prompt: str, summary: str) -> str:
    """The system prompt, with the summary of earlier turns after it when there is one."""
    if not summary:
        return system_prompt
    parts = [system_prompt.strip(), f"{SUMMARY_HEADING}\n{summary.strip()}"]
    return "\n\n".join(p for p in parts if p)


def fit_turns(system: str, turns: list[Turn], budget: int) -> list[Turn]:
    """The newest turns that fit in `budget` beside `system`; the last turn is always kept."""
    if not turns:
        return []
    remaining = budget - estimate_tokens(system) - MESSAGE_OVERHEAD
    kept = [turns[-1]]
    remaining -= turns[-1].cost()
    for turn in reversed(turns[:-1]):
        remaining -= turn.cost()
        if remaining < 0:
            break
        kept.append(turn)
    kept.reverse()
    # A request starts with the user's turn: a leading reply without its question is noise.
    while len(kept) > 1 and kept[0].role != "user":
        kept.pop(0)
    return kept


def history_tokens(system: str, turns: list[Turn]) -> int:
    """Estimated tokens of a request made of `system` and `turns`."""
    return estimate_tokens(system) + MESSAGE_OVERHEAD + sum(t.cost() for t in turns)


def split_for_summary(turns: list[Turn], budget: int) -> tuple[list[Turn], list[Turn]]:
    """(older turns to summarize, recent turns kept verbatim): the recent window is half the budget.

    The recent window always holds at least the last two turns, and starts with a user turn.
    """
    window = budget // 2
    recent: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        if len(recent) >= 2 and used + turn.cost() > window:
            break
        recent.append(turn)
        used += turn.cost()
    recent.reverse()
    older = turns[: len(turns) - len(recent)]
    while recent and recent[0].role != "user":
        older.append(recent.pop(0))
    return older, recent


def summary_prompt(previous_summary: str, turns: list[Turn]) -> tuple[str, list[dict[str, str]]]:
    """The system prompt and single user message that ask a model to summarize `turns`."""
    system = (
        "You write concise running summaries of a conversation between a user and an assistant. "
        "Keep facts, names, numbers, decisions, open questions and the user's preferences. "
        "Write in the third person, as plain prose or short bullet points, at most 250 words. "
        "Reply with the summary only."
    )
    lines = []
    if previous_summary:
        lines.append(f"Summary so far:\n{previous_summary.strip()}\n")
    lines.append("New messages to fold into the summary:")
    for turn in turns:
        lines.append(f"\n[{turn.role}]\n{turn.content.strip()}")
    return system, [{"role": "user", "content": "\n".join(lines)}]
