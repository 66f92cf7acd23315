"""Template filters for the chat page."""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString

from ..rendering import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    """A reply's markdown, rendered and sanitized."""
    return render_markdown(text or "")
