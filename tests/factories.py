"""Test data: users, personas, conversations, messages."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from conversations.models import Conversation, Message, Persona


def make_user(name: str, **extra):
    User = get_user_model()
    return User.objects.create_user(username=name, email=f"{name}@example.com", password="pw-" + name * 3, **extra)


def default_persona() -> Persona:
    """The migration's default persona (transactional tests flush it away: make it again)."""
    persona = Persona.objects.filter(is_default=True).first()
    if persona is None:
        persona = Persona.objects.create(
            name="Assistant",
            slug="assistant",
            system_prompt="You are a helpful, concise assistant. Use markdown where it helps.",
            is_default=True,
        )
    return persona


def make_persona(slug: str = "coder", **fields) -> Persona:
    fields.setdefault("name", slug.title())
    fields.setdefault("system_prompt", f"You are {slug}.")
    return Persona.objects.create(slug=slug, **fields)


def make_conversation(owner, persona: Persona | None = None, **fields) -> Conversation:
    return Conversation.objects.create(owner=owner, persona=persona or default_persona(), **fields)


def make_turns(conversation: Conversation, n: int, words: int = 5) -> list[Message]:
    """`n` alternating user/assistant messages, complete."""
    out = []
    for i in range(n):
        role = Message.Role.USER if i % 2 == 0 else Message.Role.ASSISTANT
        text = " ".join(f"{role}{i}w{j}" for j in range(words))
        out.append(add_message(conversation, role, text))
    return out


def add_message(conversation: Conversation, role: str, content: str = "", **fields) -> Message:
    """A message appended to the active path (a child of the active leaf), which it then ends."""
    parent_id = conversation.active_leaf_id
    message = Message.objects.create(
        conversation=conversation, role=role, content=content, parent_id=parent_id, **fields
    )
    if parent_id is not None:
        Message.objects.filter(pk=parent_id).update(active_child_id=message.pk)
    Conversation.objects.filter(pk=conversation.pk).update(active_leaf_id=message.pk)
    conversation.active_leaf_id = message.pk
    return message


def link_path(conversation: Conversation, messages: list[Message]) -> list[Message]:
    """Chain `messages` (stored, in order) into one path from the root, and make it the active one."""
    previous = None
    for m in messages:
        m.parent_id = previous.pk if previous else None
        if previous is not None:
            previous.active_child_id = m.pk
        previous = m
    Message.objects.bulk_update(messages, ["parent_id", "active_child_id"], batch_size=500)
    leaf = messages[-1].pk if messages else None
    Conversation.objects.filter(pk=conversation.pk).update(active_leaf_id=leaf)
    conversation.active_leaf_id = leaf
    return messages
