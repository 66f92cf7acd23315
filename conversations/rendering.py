"""Markdown -> HTML for replies: rendered with markdown-it (GFM tables, strikethrough), then sanitized."""

from __future__ import annotations

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

# Raw HTML in the markdown is escaped by the renderer (html=False) and sanitized afterwards anyway.
_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)

ALLOWED_TAGS = {
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "img", "li",
    "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "code": {"class"},
    "ol": {"start"},
    "td": {"style"},
    "th": {"style"},
}


def _code_class(tag: str, attribute: str, value: str) -> str | None:
    if tag == "code" and attribute == "class":
        return value if value.startswith("language-") and value.replace("-", "").isalnum() else None
    if attribute == "style":
        return value if value in {"text-align:left", "text-align:center", "text-align:right"} else None
    return value


def sanitize(html: str) -> str:
    """Only the tags markdown produces; links open safely; no script, handler or javascript: URL."""
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        attribute_filter=_code_class,
    )


def render_markdown(text: str) -> SafeString:
    """A reply's markdown as safe HTML."""
    return mark_safe(sanitize(_md.render(text)))  # noqa: S308 - sanitized just above
