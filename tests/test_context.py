"""Budgeting, pure: the token estimate, trimming to the budget, and what a summary folds in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conversations.context import (
    MESSAGE_OVERHEAD,
    RECENT_SHARE,
    SUMMARY_HEADING,
    SUMMARY_MIN_REQUEST,
    SUMMARY_SYSTEM,
    Turn,
    due_for_summary,
    estimate_tokens,
    fit_turns,
    history_tokens,
    split_for_summary,
    summary_batch,
    summary_prompt,
    system_text,
)

# Token counts measured with OpenAI's o200k_base tokenizer (the bpe-openai package), for the
# estimate to be held against: it should run a little high, never far off.
MEASURED = [
    (
        "The reply is generated whether or not any socket stays open; closing the tab does not stop it.",
        20,
    ),
    ("def fit_turns(system: str, turns: list[Turn], budget: int) -> list[Turn]:\n    return turns[-1:]\n", 29),
    (" ".join(str(i * 7919) for i in range(50)), 148),
    ("人人生而自由，在尊严和权利上一律平等。", 15),
    ("Die Würde des Menschen ist unantastbar.", 11),
]


@pytest.mark.parametrize(("text", "o200k"), MEASURED)
def test_it_estimates_tokens_close_to_a_real_tokenizer_and_on_the_high_side(text, o200k):
    estimate = estimate_tokens(text)
    assert o200k * 0.9 <= estimate <= o200k * 1.4, (estimate, o200k)


def test_it_counts_nothing_for_empty_text_and_more_for_more_text():
    assert estimate_tokens("") == 0
    assert estimate_tokens("hello") == 1
    assert estimate_tokens("hello " * 100) == 100
    assert estimate_tokens("🎉") == 2


def turns_of(costs: list[int], first_role: str = "user") -> list[Turn]:
    """Alternating turns whose provider counts make each cost exactly `cost + MESSAGE_OVERHEAD`."""
    roles = ["user", "assistant"] if first_role == "user" else ["assistant", "user"]
    return [Turn(id=i + 1, role=roles[i % 2], content=f"t{i}", tokens=c) for i, c in enumerate(costs)]


def test_it_uses_the_providers_count_when_stored_and_the_estimate_otherwise():
    assert Turn(1, "assistant", "many words " * 50, tokens=7).cost() == 7 + MESSAGE_OVERHEAD
    assert Turn(1, "user", "many words " * 50).cost() == estimate_tokens("many words " * 50) + MESSAGE_OVERHEAD


def test_it_marks_the_summary_in_the_system_text():
    assert system_text("Be brief.", "") == "Be brief."
    text = system_text("Be brief.", "  The user likes tea.  ")
    assert text == f"Be brief.\n\n{SUMMARY_HEADING}\nThe user likes tea."
    assert system_text("", "The user likes tea.") == f"{SUMMARY_HEADING}\nThe user likes tea."


def test_it_keeps_the_newest_turns_that_fit():
    turns = turns_of([10, 10, 10, 10, 10, 10])
    system = ""
    budget = MESSAGE_OVERHEAD + 3 * (10 + MESSAGE_OVERHEAD) + 1
    kept = fit_turns(system, turns, budget)
    # Three turns fit; the oldest of them is a reply, dropped so the request opens with a user turn.
    assert [t.id for t in kept] == [5, 6]


def test_it_never_drops_the_latest_user_message_even_over_budget():
    turns = turns_of([10, 10, 500])
    assert [t.id for t in fit_turns("", turns, 50)] == [3]


@settings(max_examples=300, deadline=None)
@given(
    costs=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=40),
    budget=st.integers(min_value=0, max_value=3000),
    system=st.text(max_size=200),
)
def test_it_fits_a_contiguous_recent_stretch_within_budget(costs, budget, system):
    turns = turns_of(costs)
    kept = fit_turns(system, turns, budget)
    assert kept and kept[-1] is turns[-1]
    assert kept == turns[len(turns) - len(kept) :]  # a suffix: only the oldest turns go
    if len(kept) > 1:
        assert kept[0].role == "user"
        assert history_tokens(system, kept) <= budget
    # Maximal: the turn before the kept stretch would not have fitted (or was a leading reply).
    start = len(turns) - len(kept)
    if start > 0:
        wider = turns[start - 1 :]
        assert history_tokens(system, wider) > budget or wider[0].role != "user" or len(kept) == 1


def test_it_is_due_for_a_summary_near_the_budget_only():
    turns = turns_of([20] * 6)  # 6 * 24 = 144 tokens, plus 4 for the empty system text
    assert not due_for_summary("", turns, 200)
    assert due_for_summary("", turns, 160)
    assert not due_for_summary("", turns[:2], 10)  # two turns always stay verbatim: nothing to fold


@settings(max_examples=300, deadline=None)
@given(
    costs=st.lists(st.integers(min_value=0, max_value=200), min_size=0, max_size=40),
    budget=st.integers(min_value=50, max_value=3000),
    first_role=st.sampled_from(["user", "assistant"]),
)
def test_it_splits_older_turns_from_a_recent_window(costs, budget, first_role):
    turns = turns_of(costs, first_role)
    older, recent = split_for_summary(turns, budget)
    assert older + recent == turns
    if recent and older:
        assert recent[0].role == "user"
    if len(turns) >= 3 and sum(t.cost() for t in turns) > budget * RECENT_SHARE:
        assert older, "something to summarize"
    users_late = [t for t in turns[1:] if t.role == "user"]
    if len(turns) >= 3 and users_late:
        assert recent, "the latest exchange stays verbatim"
        assert turns[-1] in recent
    # The window holds about RECENT_SHARE of the budget: widened by at most one turn to start on a user.
    if len(recent) > 3:
        assert sum(t.cost() for t in recent[1:]) <= budget * RECENT_SHARE + max(t.cost() for t in recent)


def test_it_keeps_the_message_being_answered_verbatim():
    # While a reply streams, its question is the last finished turn: it must not be summarized.
    turns = turns_of([50] * 9)  # user, assistant, ..., user (the one being answered)
    older, recent = split_for_summary(turns, 120)
    assert turns[-1] in recent and recent[0].role == "user"
    assert older and older[-1].role == "assistant"


def test_it_asks_for_a_summary_that_folds_the_previous_one_in():
    system, messages = summary_prompt(
        "The user is Ada.", [Turn(1, "user", "I like tea."), Turn(2, "assistant", "Noted.")]
    )
    assert system == SUMMARY_SYSTEM
    assert len(messages) == 1 and messages[0]["role"] == "user"
    text = messages[0]["content"]
    assert (
        text.index("Summary so far:\nThe user is Ada.")
        < text.index("[user]\nI like tea.")
        < text.index("[assistant]\nNoted.")
    )
    assert "Summary so far" not in summary_prompt("", [Turn(1, "user", "x")])[1][0]["content"]


def test_it_batches_a_long_backlog_so_each_summary_request_fits():
    older = turns_of([400] * 20)
    budget = 2500
    done: list[Turn] = []
    summary = "A previous summary of some length. " * 5
    while len(done) < len(older):
        batch = summary_batch(summary, older[len(done) :], budget)
        assert batch, "always at least one turn"
        system, messages = summary_prompt(summary, batch)
        if len(batch) > 1:
            assert estimate_tokens(system) + sum(estimate_tokens(m["content"]) for m in messages) <= budget
        done += batch
    assert done == older
    assert summary_batch("", turns_of([5000]), 100) == turns_of([5000])  # one oversized turn still goes
    # A tiny budget still lets a summary request take SUMMARY_MIN_REQUEST tokens.
    assert SUMMARY_MIN_REQUEST // 110 <= len(summary_batch("", turns_of([100] * 30), 200)) < SUMMARY_MIN_REQUEST // 100


def test_stable_cuts_keep_the_first_turn_until_the_next_chunk_must_go():
    """While a summary is pending, requests over budget drop old turns in chunks counted from the
    oldest turn: successive requests begin with the same turn (a prompt-cache hit), unlike fit_turns."""
    from conversations.context import fit_turns_stable

    turns = [Turn(i, "user" if i % 2 == 0 else "assistant", " ".join(["word"] * 20)) for i in range(60)]
    budget = 200
    firsts = []
    for n in range(2, 61, 2):
        kept = fit_turns_stable("Be brief.", turns[: n - 1], budget)
        assert history_tokens("Be brief.", kept) <= budget and kept[0].role == "user"
        assert kept == turns[n - 1 - len(kept) : n - 1]
        firsts.append(kept[0].id)
    changes = sum(1 for a, b in zip(firsts, firsts[1:], strict=False) if a != b)
    sliding = [fit_turns("Be brief.", turns[: n - 1], budget)[0].id for n in range(2, 61, 2)]
    slides = sum(1 for a, b in zip(sliding, sliding[1:], strict=False) if a != b)
    assert 0 < changes <= slides // 2  # here a chunk is 4 turns and each request adds 2
