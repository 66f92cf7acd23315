"""The channel-layer group names of a conversation."""

from __future__ import annotations

import uuid


def group_name(conversation_id: uuid.UUID) -> str:
    """Every socket of a conversation listens on this group."""
    return f"conv.{conversation_id.hex}"


def control_group_name(conversation_id: uuid.UUID) -> str:
    """The running reply of a conversation listens here for requests from other processes."""
    return f"ctl.{conversation_id.hex}"
