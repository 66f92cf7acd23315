"""Background summaries of older turns, and model-written titles. Called by the task worker."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from asgiref.sync import async_to_sync
from django.db import transaction
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
from .models import Conversation, Message, UsageRecord
from .pricing import thread_model
from .selectors import history_turns, recent_turns
from .services import effective_persona, usage_record_call

log = logging.getLogger(__name__)

# A claim older than this belongs to a worker that died mid-summary: another may take over.
CLAIM_TIMEOUT = dt.timedelta(minutes=10)
# Backlog requests one run may make (each within the budget); the next reply queues the rest.
MAX_BATCHES = 8
NO_LIMIT = 2**62


def needs_summary(conversation: Conversation) -> bool:
    """True when the unsummarized history (finished messages only) nears the persona's budget."""
    persona = effective_persona(conversation)
    system = system_text(persona.system_prompt, conversation.summary)
    budget = persona.budget_tokens()
    # Enough of the newest turns to pass the threshold decide it as the whole history would.
    threshold = int(budget * SUMMARIZE_AT) - estimate_tokens(system) - MESSAGE_OVERHEAD
    turns = recent_turns(conversation, before_id=NO_LIMIT, tokens=threshold, at_least=3)
    return due_for_summary(system, turns, budget)


def summarize(conversation_id: uuid.UUID | str) -> bool:
    """Fold the older turns into the conversation's summary. True if a new summary was stored.

    Safe to run twice at once: a claim on the row (`summarizing_since`) lets only one run call
    the model, and each summary is saved only if nobody moved `summary_through` meanwhile.
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
        return _fold(conversation_id)
    finally:
        # Release only our own claim: a run that outlived CLAIM_TIMEOUT must not free a newer one.
        Conversation.objects.filter(pk=conversation_id, summarizing_since=now).update(summarizing_since=None)


def _fold(conversation_id: uuid.UUID | str) -> bool:
    conversation = Conversation.objects.select_related("persona").get(pk=conversation_id)
    if not needs_summary(conversation):
        return False
    persona = effective_persona(conversation)
    budget = persona.budget_tokens()
    # A reply still streaming, and the message it answers, are never summarized: stop before it.
    streaming = conversation.messages.filter(status=Message.Status.STREAMING).order_by("id").first()
    turns = history_turns(conversation, before_id=streaming.pk if streaming else NO_LIMIT)
    older, _recent = split_for_summary(turns, budget)
    stored = False
    for _ in range(MAX_BATCHES):
        if not older:
            break
        batch = summary_batch(conversation.summary, older, budget)
        system, messages = summary_prompt(conversation.summary, batch)
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
        with transaction.atomic():
            locked = Conversation.objects.select_for_update().get(pk=conversation_id)
            if locked.summary_through != conversation.summary_through:
                log.info("summary of %s was moved by another run; dropping this one", conversation_id)
                break
            locked.summary = text
            locked.summary_through = batch[-1].id
            locked.summary_updated_at = timezone.now()
            locked.save(update_fields=["summary", "summary_through", "summary_updated_at"])
        conversation = locked
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
    first = conversation.messages.filter(role=Message.Role.USER, hidden=False).order_by("id").first()
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
