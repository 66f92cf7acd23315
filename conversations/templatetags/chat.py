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
    """The sanitizer's allow-list for static/js/markdown.js, as the json_script `markdown-policy`."""
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


# Markdown syntax a snippet shows as plain text. The text is a window cut out of a message, so these
# work line by line and on fragments (a link whose start was cut off), not on a parsed document.
_MARKDOWN_SYNTAX = [
    (re.compile(r"```[\w+-]*"), " "),  # code fences
    (re.compile(r"!?\[([^\]\n]*)\]\([^)\s]*\)"), r"\1"),  # links and images: their text
    (re.compile(r"\]\([^)\s]*\)"), " "),  # ... whose start was cut off
    (re.compile(r"(?m)^[ \t]*(?:#{1,6}|>+|[-*+]|\d+[.)])[ \t]+"), ""),  # headings, quotes, list items
    (re.compile(r"(?m)^[ \t]*\|?(?:[ \t]*:?-+:?[ \t]*\|?)+[ \t]*$"), ""),  # table rules
    (re.compile(r"\*\*|__|~~|`"), ""),  # strong, strike, code
    (re.compile(r"(?<![\w*])[*_](?=\S)|(?<=\S)[*_](?![\w*])"), ""),  # emphasis (not snake_case)
    (re.compile(r"\s*\|\s*"), " "),  # table cells
]


def plain_text(markdown: str) -> str:
    """Markdown as the words a person reads: `**bold** [link](url)` -> `bold link`."""
    for pattern, replacement in _MARKDOWN_SYNTAX:
        markdown = pattern.sub(replacement, markdown)
    return markdown


@register.filter
def snippet(text: str | None, query: str) -> SafeString:
    """A search hit's surrounding text as plain text (no markdown syntax), escaped, with the matched words in <mark>."""
    if not text:
        return mark_safe("")  # noqa: S308 - empty
    cut = len(text) >= SNIPPET_CHARS - 1
    text = " ".join(plain_text(text).split())
    if MARK_START in text:  # PostgreSQL's ts_headline marked the matches
        html = escape(text).replace(MARK_START, "<mark>").replace(MARK_END, "</mark>")
        return mark_safe(html)  # noqa: S308 - escaped above; only our own tags added
    terms = [query.strip()] if query.strip() else []
    terms += search_terms(query)
    suffix = "…" if cut else ""
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
