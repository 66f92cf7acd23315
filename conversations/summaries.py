"""Background summaries of older turns, and model-written titles. Called by the task worker."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from asgiref.sync import async_to_sync
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from .context import (
    MESSAGE_OVERHEAD,
    SUMMARIZE_AT,
    due_for_summary,
    estimate_tokens,
    split_for_summary,
    summary_batch,
    summary_max_tokens,
    summary_prompt,
    system_text,
)
from .llm import ChatRequest, Usage, complete_once
from .models import Conversation, Message, Summary, UsageRecord
from .pricing import thread_model
from .selectors import PathHistory, history_turns, path_history, recent_turns, summary_for_path
from .services import effective_persona, usage_record_call

log = logging.getLogger(__name__)

# A claim older than this belongs to a worker that died mid-summary: another may take over.
CLAIM_TIMEOUT = dt.timedelta(minutes=10)
# Backlog requests one run may make (each within the budget); the next reply queues the rest.
MAX_BATCHES = 8


def needs_summary(conversation: Conversation, leaf_id: int | None = None) -> bool:
    """True when the unsummarized part of the path to `leaf_id` (default: the active path), finished
    messages only, nears the persona's budget."""
    return _needs_summary(conversation, _path(conversation, leaf_id))


def _path(conversation: Conversation, leaf_id: int | None) -> PathHistory:
    return path_history(conversation, leaf_id=leaf_id)


def _needs_summary(conversation: Conversation, history: PathHistory) -> bool:
    persona = effective_persona(conversation)
    system = system_text(persona.system_prompt, history.summary_text)
    budget = persona.budget_tokens()
    # Enough of the newest turns to pass the threshold decide it as the whole history would.
    threshold = int(budget * SUMMARIZE_AT) - estimate_tokens(system) - MESSAGE_OVERHEAD
    turns = recent_turns(history, tokens=threshold, at_least=3)
    return due_for_summary(system, turns, budget)


def summarize(conversation_id: uuid.UUID | str, leaf_id: int | None = None) -> bool:
    """Fold the older turns of a path (to `leaf_id`, default the active path) into a summary of that
    path. True if a new summary was stored.

    Safe to run twice at once: a claim on the row (`summarizing_since`) lets only one run call
    the model, and each summary is saved only if nobody stored one further along this path meanwhile.
    A provider failure raises ProviderError after releasing the claim; chatting never waits on it.
    """
    now = timezone.now()
    claimed = (
        Conversation.objects.filter(pk=conversation_id)
        .filter(Q(summarizing_since__isnull=True) | Q(summarizing_since__lt=now - CLAIM_TIMEOUT))
        .update(summarizing_since=now)
    )
    if not claimed:
        log.info("summary of %s is already being written elsewhere", conversation_id)
        return False
    try:
        return _fold(conversation_id, leaf_id)
    finally:
        # Release only our own claim: a run that outlived CLAIM_TIMEOUT must not free a newer one.
        Conversation.objects.filter(pk=conversation_id, summarizing_since=now).update(summarizing_since=None)


def _fold(conversation_id: uuid.UUID | str, leaf_id: int | None) -> bool:
    conversation = Conversation.objects.select_related("persona").get(pk=conversation_id)
    if leaf_id is not None and not conversation.messages.filter(pk=leaf_id).exists():
        return False  # the branch is gone (the thread was deleted meanwhile)
    history = _path(conversation, leaf_id)
    if not _needs_summary(conversation, history):
        return False
    persona = effective_persona(conversation)
    budget = persona.budget_tokens()
    # A reply still streaming on this path, and the message it answers, are never summarized: stop before it.
    streaming = conversation.messages.filter(status=Message.Status.STREAMING, pk__in=history.ids).first()
    if streaming is not None:
        history.ids = history.ids[: history.ids.index(streaming.pk)]
    turns = history_turns(history)
    older, _recent = split_for_summary(turns, budget)
    previous = history.summary
    stored = False
    for _ in range(MAX_BATCHES):
        if not older:
            break
        previous_text = previous.text if previous else ""
        batch = summary_batch(previous_text, older, budget)
        system, messages = summary_prompt(previous_text, batch)
        model = thread_model(conversation, persona)
        text, usage = async_to_sync(complete_once)(
            model,
            ChatRequest(
                model="",
                system=system,
                messages=messages,
                purpose="summary",
                temperature=0.2,
                max_output_tokens=summary_max_tokens(budget),
            ),
        )
        _charge(conversation, model, UsageRecord.Kind.SUMMARY, system, messages, text, usage)
        text = text.strip()
        if not text:
            log.warning("summary of %s came back empty; keeping the old one", conversation_id)
            break
        try:
            with transaction.atomic():
                Conversation.objects.select_for_update().get(pk=conversation_id)
                now_best = summary_for_path(history.conversation_id, history.ids)
                if (now_best.pk if now_best else None) != (previous.pk if previous else None):
                    log.info("summary of %s was moved by another run; dropping this one", conversation_id)
                    break
                previous = Summary.objects.create(conversation_id=conversation.pk, through_id=batch[-1].id, text=text)
        except IntegrityError:
            log.info("summary of %s through %s exists already; dropping this one", conversation_id, batch[-1].id)
            break
        stored = True
        older = older[len(batch) :]
        log.info(
            "summarized %s through message %s (%s in, %s out tokens)",
            conversation_id,
            batch[-1].id,
            usage.input_tokens,
            usage.output_tokens,
        )
    return stored


def _charge(
    conversation: Conversation,
    model: str,
    kind: str,
    system: str,
    messages: list[dict[str, str]],
    text: str,
    usage: Usage,
) -> None:
    """Record a background call against the thread's owner; a failure to record never loses the result."""
    estimate = (
        estimate_tokens(system) + sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD for m in messages),
        estimate_tokens(text),
    )
    try:
        usage_record_call(conversation=conversation, model=model, kind=kind, usage=usage, estimate=estimate)
    except Exception:
        log.exception("could not record the %s call of %s", kind, conversation.pk)


TITLE_PROMPT = (
    "Write a short title (3 to 6 words) for a conversation that starts with the message below. "
    "Reply with the title only: no quotes, no final punctuation."
)


def write_title(conversation_id: uuid.UUID | str) -> str | None:
    """Replace the first-words title with one written by the thread's model (once)."""
    conversation = Conversation.objects.select_related("persona").get(pk=conversation_id)
    if not conversation.title_is_auto:
        return None
    first = conversation.messages.filter(role=Message.Role.USER).order_by("id").first()
    if first is None:
        return None
    model = thread_model(conversation, effective_persona(conversation))
    messages = [{"role": "user", "content": first.content[:2000]}]
    text, usage = async_to_sync(complete_once)(
        model,
        ChatRequest(model="", system=TITLE_PROMPT, messages=messages, purpose="title", max_output_tokens=30),
    )
    _charge(conversation, model, UsageRecord.Kind.TITLE, TITLE_PROMPT, messages, text, usage)
    title = " ".join(text.strip().strip("\"'").split())[:80].rstrip(".")
    if not title:
        return None
    # Only if the user has not renamed it meanwhile.
    Conversation.objects.filter(pk=conversation_id, title_is_auto=True).update(title=title, title_is_auto=False)
    return title
