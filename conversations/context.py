"""Pure functions: persona + summary + turns -> the messages of one request, within its token budget."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

# Per-message framing the providers add (role markers, separators), in tokens.
MESSAGE_OVERHEAD = 4
SUMMARY_HEADING = "Summary of the earlier conversation (older messages are not repeated below):"
# Summarize once the unsummarized history reaches this share of the budget: the next user
# message then still fits, so the summary is usually stored before any request needs trimming.
SUMMARIZE_AT = 0.9
# The newest turns kept verbatim after a summary: this share of the budget (at least one exchange).
RECENT_SHARE = 0.5

# Roughly how BPE tokenizers pre-split text: letter runs, digit runs, single non-ASCII
# characters, whitespace, and runs of ASCII punctuation.
_PIECES = re.compile(r"[A-Za-z]+|[0-9]+|[^\x00-\x7f]|\s+|[^A-Za-z0-9\s\x80-\U0010ffff]+")


def estimate_tokens(text: str | list[dict[str, Any]]) -> int:
    """Tokens `text` is likely to cost, without a tokenizer; meant to err a little high.

    A request's content may be a list of parts (a user turn with files, llm/base.py): each part
    counts its `tokens` (set when the request was built: an image by its provider's formula), or
    the estimate of its text.

    Per piece: a letter run is one token per 7 letters (most English words are one token),
    digits one per 3 (tokenizers group at most three), a space before a number one, ASCII
    punctuation one per 3 characters, a newline half a token, other characters one each
    (CJK, accented letters) or two when they take 4 UTF-8 bytes (emoji). Measured against
    OpenAI's o200k_base it runs 3-16% high on English, markdown and code; docs/architecture.md
    has the table.
    """
    if not isinstance(text, str):
        return sum(part.get("tokens") or estimate_tokens(part.get("text") or "") for part in text)
    total = 0.0
    previous = ""
    for match in _PIECES.finditer(text):
        piece = match.group()
        first = piece[0]
        if first.isascii():
            if first.isalpha():
                total += math.ceil(len(piece) / 7)
            elif first.isdigit():
                total += math.ceil(len(piece) / 3) + (1 if previous.endswith(" ") else 0)
            elif first.isspace():
                total += piece.count("\n") / 2
            else:
                total += math.ceil(len(piece) / 3)
        else:
            total += 2 if len(first.encode()) == 4 else 1
        previous = piece
    return math.ceil(total)


# Tokens an Anthropic PDF page costs besides its text (it is also read as an image of the page).
PDF_PAGE_TOKENS = 1600


@dataclass(frozen=True)
class AttachmentRef:
    """A file sent with a user message, as the request sees it (no bytes: those are read when sending)."""

    id: str
    name: str
    kind: str  # "image", "pdf", "text"
    content_type: str
    tokens: int = 0  # estimated tokens of its text (text files, PDFs)
    width: int = 0
    height: int = 0
    pages: int = 0


# What each provider reads of an image, from its documentation. OpenAI (high detail): the image is
# fitted in 2048×2048, then its short side scaled to 768; 85 tokens + 170 per 512-px tile of that.
# Anthropic: the long edge scaled to 1568 and the image to ~1,600 tokens (width × height / 750),
# i.e. 1.2 megapixels; it refuses a side over 8000 px (2000 px with more than 20 images in a
# request) and an image over 5 MB of base64. The site sends images at these sizes (images.py), so
# what is counted here is what is sent.
OPENAI_FIT, OPENAI_SHORT_SIDE = 2048, 768
ANTHROPIC_LONG_EDGE, ANTHROPIC_MAX_PIXELS = 1568, 1_200_000


def image_sent_size(width: int, height: int, provider: str) -> tuple[int, int]:
    """The size an image of `width`×`height` is sent to `provider` at: never larger than the provider reads
    it (OpenAI's and Anthropic's rules above; any other provider: the smaller of the two)."""
    w, h = max(1, width), max(1, height)
    if provider == "openai":
        scale = min(1.0, OPENAI_FIT / max(w, h))
        scale = min(scale, OPENAI_SHORT_SIDE / min(w, h))
    elif provider == "anthropic":
        scale = min(1.0, ANTHROPIC_LONG_EDGE / max(w, h), math.sqrt(ANTHROPIC_MAX_PIXELS / (w * h)))
    else:
        return min((image_sent_size(w, h, p) for p in ("openai", "anthropic")), key=lambda size: size[0] * size[1])
    if scale >= 1.0:
        return w, h
    return max(1, math.floor(w * scale)), max(1, math.floor(h * scale))


def image_tokens(width: int, height: int, provider: str = "") -> int:
    """Tokens an image costs at the size it is sent: OpenAI's tile formula, Anthropic's pixels / 750;
    unknown: the larger."""
    if provider == "openai":
        w, h = image_sent_size(width, height, provider)
        return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)
    if provider == "anthropic":
        w, h = image_sent_size(width, height, provider)
        return math.ceil(w * h / 750)
    return max(image_tokens(width, height, "openai"), image_tokens(width, height, "anthropic"))


def attachment_tokens(ref: AttachmentRef, provider: str = "") -> int:
    """Tokens a file adds to a request to `provider` (unknown provider: the dearer reading)."""
    if ref.kind == "image":
        return image_tokens(ref.width, ref.height, provider)
    if ref.kind == "pdf" and provider in ("anthropic", ""):
        return ref.tokens + PDF_PAGE_TOKENS * ref.pages
    return ref.tokens


def fenced(name: str, text: str) -> str:
    """A file's text for a model: its name, then the text in a fence longer than any backtick run in it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"File `{name}`:\n{fence}\n{text.rstrip()}\n{fence}"


@dataclass(frozen=True)
class Turn:
    """One stored message as history: its id, role, text, and its token count if known."""

    id: int
    role: str
    content: str
    tokens: int | None = None  # the provider's count (assistant output tokens), when stored
    attachments: tuple[AttachmentRef, ...] = ()
    provider: str = ""  # whose formula prices the attachments ("" when not known: the dearer)

    @cached_property
    def _cost(self) -> int:
        text = self.tokens if self.tokens is not None else estimate_tokens(self.content)
        files = sum(attachment_tokens(a, self.provider) for a in self.attachments)
        return text + files + MESSAGE_OVERHEAD

    def cost(self) -> int:
        """Tokens this turn adds to a request: the provider's count if stored, else the estimate."""
        return self._cost


def system_text(system_prompt: str, summary: str) -> str:
    """The system prompt, with the summary of earlier turns after it, marked as such, when there is one."""
    if not summary.strip():
        return system_prompt
    parts = [system_prompt.strip(), f"{SUMMARY_HEADING}\n{summary.strip()}"]
    return "\n\n".join(p for p in parts if p)


def history_tokens(system: str, turns: list[Turn]) -> int:
    """Estimated tokens of a request made of `system` and `turns`."""
    return estimate_tokens(system) + MESSAGE_OVERHEAD + sum(t.cost() for t in turns)


def fit_turns(system: str, turns: list[Turn], budget: int) -> list[Turn]:
    """The newest turns that fit in `budget` beside `system`; the last turn is always kept.

    Only the oldest turns are dropped, so what is sent is always a contiguous recent stretch.
    """
    if not turns:
        return []
    remaining = budget - estimate_tokens(system) - MESSAGE_OVERHEAD - turns[-1].cost()
    start = len(turns) - 1
    while start > 0 and remaining - turns[start - 1].cost() >= 0:
        start -= 1
        remaining -= turns[start].cost()
    kept = turns[start:]
    # A request starts with the user's turn: a leading reply without its question is noise.
    while len(kept) > 1 and kept[0].role != "user":
        kept = kept[1:]
    return kept


def fit_turns_stable(system: str, turns: list[Turn], budget: int) -> list[Turn]:
    """Like `fit_turns`, but when the turns do not fit, the oldest go in chunks of about half the room,
    counted from the oldest turn given (cut just before a user turn).

    The cut points depend only on the older turns, not on the newest, so successive requests begin
    with the same turns (and the providers' prompt caches keep their prefix) until the next chunk
    must go; `fit_turns` would move the first turn at every request while a summary is pending.
    """
    if not turns:
        return []
    room = budget - estimate_tokens(system) - MESSAGE_OVERHEAD
    costs = [t.cost() for t in turns]
    total = sum(costs)
    chunk = max(1, room // 2)
    start = 0
    while total > room and start < len(turns) - 1:
        dropped = 0
        while start < len(turns) - 1 and (dropped < chunk or turns[start].role != "user"):
            dropped += costs[start]
            total -= costs[start]
            start += 1
    if total > room:  # the newest turn alone is too long: fit_turns keeps it, alone
        return fit_turns(system, turns[start:], budget)
    kept = turns[start:]
    while len(kept) > 1 and kept[0].role != "user":
        kept = kept[1:]
    return kept


def due_for_summary(system: str, turns: list[Turn], budget: int) -> bool:
    """True once `system` and the unsummarized `turns` reach SUMMARIZE_AT of the budget."""
    return len(turns) > 2 and history_tokens(system, turns) > budget * SUMMARIZE_AT


def split_for_summary(turns: list[Turn], budget: int) -> tuple[list[Turn], list[Turn]]:
    """(older turns to summarize, recent turns kept verbatim).

    The recent window is RECENT_SHARE of the budget, always holds at least the last two turns,
    and starts with a user turn (so older ends just before a user turn).
    """
    window = budget * RECENT_SHARE
    start = len(turns)
    used = 0
    while start > 0:
        cost = turns[start - 1].cost()
        if len(turns) - start >= 2 and used + cost > window:
            break
        start -= 1
        used += cost
    if 0 < start < len(turns) and turns[start].role != "user":
        # Widen the window back to the user turn that asked for its first reply; if that would
        # leave nothing to summarize, narrow it to its first user turn instead.
        back = start - 1
        while back > 0 and turns[back].role != "user":
            back -= 1
        if back > 0:
            start = back
        else:
            while start < len(turns) and turns[start].role != "user":
                start += 1
    return turns[:start], turns[start:]


SUMMARY_SYSTEM = (
    "You write concise running summaries of a conversation between a user and an assistant. "
    "Keep facts, names, numbers, decisions, open questions and the user's preferences. "
    "Write in the third person, as plain prose or short bullet points, at most 250 words. "
    "Reply with the summary only."
)


def summary_prompt(previous_summary: str, turns: list[Turn]) -> tuple[str, list[dict[str, str]]]:
    """The system prompt and single user message that ask a model to fold `turns` into the summary."""
    lines = []
    if previous_summary.strip():
        lines.append(f"Summary so far:\n{previous_summary.strip()}\n")
    lines.append("New messages to fold into the summary:")
    lines.extend(_summary_line(turn) for turn in turns)
    return SUMMARY_SYSTEM, [{"role": "user", "content": "\n".join(lines)}]


def _summary_line(turn: Turn) -> str:
    return f"\n[{turn.role}]\n{turn.content.strip()}{attached_note(turn)}"


def attached_note(turn: Turn) -> str:
    """How a summary request names a turn's files (their contents are not resent)."""
    if not turn.attachments:
        return ""
    return "\n(attached: " + ", ".join(a.name for a in turn.attachments) + ")"


# A summary request may use at least this many tokens, however small the persona's budget.
SUMMARY_MIN_REQUEST = 2000


def summary_batch(previous_summary: str, older: list[Turn], budget: int) -> list[Turn]:
    """The oldest of `older` whose summary request fits in the budget (always at least one turn).

    The limit is the persona's budget, or SUMMARY_MIN_REQUEST if larger (a tiny budget should not
    mean one model call per turn). A long backlog (a persona's budget lowered, say) is folded in
    several requests, each within the limit, instead of one that no model accepts.
    """
    system, messages = summary_prompt(previous_summary, [])
    remaining = (
        max(budget, SUMMARY_MIN_REQUEST)
        - estimate_tokens(system)
        - estimate_tokens(messages[0]["content"])
        - 2 * MESSAGE_OVERHEAD
    )
    end = 0
    while end < len(older):
        # The turn (the provider's count if stored) in its framing, plus the newline that joins it on.
        turn = older[end]
        text_cost = turn.tokens if turn.tokens is not None else estimate_tokens(turn.content.strip())
        text_cost += estimate_tokens(attached_note(turn))
        cost = text_cost + estimate_tokens(f"\n[{turn.role}]\n") + 1
        if end and remaining - cost < 0:
            break
        remaining -= cost
        end += 1
    return older[:end]


def summary_max_tokens(budget: int) -> int:
    """Output cap of a summary: a quarter of the budget, between 100 and 800 tokens."""
    return max(100, min(800, budget // 4))
