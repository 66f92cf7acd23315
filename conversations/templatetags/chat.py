"""Template filters for the chat page."""

from __future__ import annotations

import re

from django import template
from django.utils.html import escape, json_script
from django.utils.safestring import SafeString, mark_safe

from ..rendering import browser_policy, render_markdown
from ..selectors import MARK_END, MARK_START, SNIPPET_CHARS, search_terms

register = template.Library()

PROVIDER_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic", "offline": "offline"}


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    """A reply's markdown, rendered and sanitized."""
    return render_markdown(text or "")


@register.simple_tag
def markdown_policy() -> SafeString:
    """The sanitizer's allow-list for static/js/markdown.js, as `<script id="markdown-policy" type="application/json">`."""
    return json_script(browser_policy(), "markdown-policy")


@register.filter
def model_label(spec: str) -> str:
    """`openai:gpt-4o-mini` -> `gpt-4o-mini (OpenAI)`; the offline model says what it is."""
    provider, _, model = (spec or "").partition(":")
    if provider == "offline":
        return "offline demo model"
    if not model:
        return spec
    return f"{model} ({PROVIDER_NAMES.get(provider, provider)})"


@register.filter
def snippet(text: str | None, query: str) -> SafeString:
    """A search hit's surrounding text, escaped, with the matched words in <mark>."""
    if not text:
        return mark_safe("")  # noqa: S308 - empty
    text = " ".join(text.split())
    if MARK_START in text:  # PostgreSQL's ts_headline marked the matches
        html = escape(text).replace(MARK_START, "<mark>").replace(MARK_END, "</mark>")
        return mark_safe(html)  # noqa: S308 - escaped above; only our own tags added
    terms = [query.strip()] if query.strip() else []
    terms += search_terms(query)
    suffix = "…" if len(text) >= SNIPPET_CHARS - 1 else ""
    if not terms:
        return mark_safe(escape(text) + suffix)  # noqa: S308 - escaped
    pattern = re.compile("|".join(re.escape(t) for t in sorted(set(terms), key=len, reverse=True)), re.IGNORECASE)
    out: list[str] = []
    last = 0
    for m in pattern.finditer(text):
        out.append(escape(text[last : m.start()]))
        out.append(f"<mark>{escape(m.group())}</mark>")
        last = m.end()
    out.append(escape(text[last:]))
    return mark_safe("".join(out) + suffix)  # noqa: S308 - every piece escaped


@register.filter
def error_hint(code: str, hints: dict[str, str] | None) -> str:
    """What to do next after an error with this code."""
    return (hints or {}).get(code or "", "")
