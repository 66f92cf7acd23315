"""Background tasks (Django's tasks API, database backend): thin wrappers around summaries.py.

A failed summary is retried twice: the task queues itself again, later (SUMMARY_RETRY_DELAYS),
and every finished reply queues a fresh run as long as the history is still over its threshold.
Chatting never waits for either: until a summary is stored, requests are trimmed to the budget.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from django.utils import timezone
from django_tasks import task
from django_tasks_db.models import DBTaskResult

from . import summaries
from .llm import ProviderError
from .models import Conversation

log = logging.getLogger(__name__)

# Delays before the 2nd and 3rd attempt of a summary whose provider call failed.
SUMMARY_RETRY_DELAYS = (dt.timedelta(seconds=30), dt.timedelta(minutes=5))


@task()
def summarize_conversation(conversation_id: str, attempt: int = 1, leaf_id: int | None = None) -> bool:
    """Summarize the older turns of a conversation's path (to `leaf_id`, default the active path) if
    that path's history is near its budget."""
    try:
        return summaries.summarize(conversation_id, leaf_id)
    except ProviderError as exc:
        if attempt <= len(SUMMARY_RETRY_DELAYS):
            run_after = timezone.now() + SUMMARY_RETRY_DELAYS[attempt - 1]
            summarize_conversation.using(run_after=run_after).enqueue(conversation_id, attempt + 1, leaf_id)
            log.warning("summary of %s failed (%r); retry %s at %s", conversation_id, exc, attempt, run_after)
        else:
            log.warning(
                "summary of %s failed (%r) %s times; the next reply queues it again", conversation_id, exc, attempt
            )
        raise  # recorded as a failed task result, visible to operators


@task()
def title_conversation(conversation_id: str) -> str | None:
    """Give a conversation a short title written by its model."""
    return summaries.write_title(conversation_id)


def _queued(task_path: str, conversation_id: str) -> bool:
    """A run of this task for this conversation is waiting and due now (a deferred retry is not)."""
    return DBTaskResult.objects.ready().filter(task_path=task_path, args_kwargs__args__0=conversation_id).exists()


def after_reply(conversation_id: uuid.UUID, leaf_id: int | None = None) -> None:
    """Queue what a finished reply calls for: a title for a new thread, a summary of the reply's path
    (`leaf_id`, default the active path) near the budget: a new branch gets its own."""
    conversation = Conversation.objects.select_related("persona").get(pk=conversation_id)
    cid = str(conversation_id)
    if conversation.title_is_auto and not _queued(title_conversation.module_path, cid):
        title_conversation.enqueue(cid)
    if summaries.needs_summary(conversation, leaf_id) and not _queued(summarize_conversation.module_path, cid):
        summarize_conversation.enqueue(cid, 1, leaf_id)
