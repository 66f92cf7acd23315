"""Background tasks (Django's tasks API, database backend): thin wrappers around summaries.py."""

from __future__ import annotations

import logging
import uuid

from django_tasks import task

from . import summaries
from .models import Conversation

log = logging.getLogger(__name__)


@task()
def summarize_conversation(conversation_id: str) -> bool:
    """Summarize a conversation's older turns if its history is over budget."""
    return summaries.summarize(conversation_id)


@task()
def title_conversation(conversation_id: str) -> str | None:
    """Give a conversation a short title written by its model."""
    return summaries.write_title(conversation_id)


def after_reply(conversation_id: uuid.UUID) -> None:
    """Queue what a finished reply calls for: a title for a new thread, a summary past the budget."""
    conversation = Conversation.objects.select_related("persona").get(pk=conversation_id)
    if conversation.title_is_auto:
        title_conversation.enqueue(str(conversation_id))
    if summaries.needs_summary(conversation):
        summarize_conversation.enqueue(str(conversation_id))
