"""Markdown -> safe HTML for replies: GitHub-flavoured markdown (markdown-it), then sanitized (nh3).

static/js/markdown.js renders the streaming reply in the browser with the same choices (marked, then
DOMPurify with the same allow-list): raw HTML shows as text, images become links (no request leaves
the page for a URL the model wrote), table alignment uses `align` (the CSP forbids inline styles),
links open in a new tab without a referrer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import nh3
from django.core.cache import cache
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from mdit_py_plugins.tasklists import tasklists_plugin

# Raw HTML in the markdown is escaped by the renderer (html=False) and sanitized afterwards anyway.
# fuzzy_link off: "settings.py" or "README.md" must not become links; URLs with a scheme do.
_md = (
    MarkdownIt("commonmark", {"html": False, "linkify": True, "typographer": False})
    .enable(["table", "strikethrough", "linkify"])
    .use(tasklists_plugin)
)
_md.linkify.set({"fuzzy_link": False})


def _image_as_link(self: Any, tokens: Sequence[Any], idx: int, options: Any, env: Any) -> str:
    # An image URL written by a model is a classic way to leak a conversation to a third party
    # (the browser fetches it at once): show a link the person may choose to open instead.
    token = tokens[idx]
    alt = "".join(child.content for child in token.children or []) or token.attrGet("src") or "image"
    return f'<a href="{escape(token.attrGet("src") or "")}">[image: {escape(alt)}]</a>'


def _align_cell(self: Any, tokens: Sequence[Any], idx: int, options: Any, env: Any) -> str:
    # `style="text-align:…"` would be dropped by the CSP (style-src 'self'); `align` is not a style.
    token = tokens[idx]
    style = token.attrGet("style") or ""
    align = style.removeprefix("text-align:") if style.startswith("text-align:") else ""
    attrs = f' align="{align}"' if align in {"left", "center", "right"} else ""
    return f"<{token.tag}{attrs}>"


_md.add_render_rule("image", _image_as_link)
_md.add_render_rule("th_open", _align_cell)
_md.add_render_rule("td_open", _align_cell)

ALLOWED_TAGS = {
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "input", "li",
    "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},
    "ol": {"start"},
    "input": {"checked", "disabled"},
}
ALLOWED_VALUES = {
    "td": {"align": {"left", "center", "right"}},
    "th": {"align": {"left", "center", "right"}},
    "input": {"type": {"checkbox"}},
}
ALLOWED_CLASSES = {
    "ul": {"contains-task-list"},
    "li": {"task-list-item"},
    "input": {"task-list-item-checkbox"},
}
FORCED_VALUES = {
    "a": {"target": "_blank"},
    # A task-list checkbox is a picture of a state, never a control.
    "input": {"type": "checkbox", "disabled": "disabled"},
}


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    if tag == "code" and attribute == "class":
        return value if value.startswith("language-") and value.replace("-", "").isalnum() else None
    return value


def sanitize(html: str) -> str:
    """Only the tags markdown produces; links open safely; no script, handler, style or javascript: URL."""
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        clean_content_tags={"script", "style"},
        attributes=ALLOWED_ATTRIBUTES,
        tag_attribute_values=ALLOWED_VALUES,
        allowed_classes=ALLOWED_CLASSES,
        set_tag_attribute_values=FORCED_VALUES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        attribute_filter=_attribute_filter,
    )


def render_markdown(text: str) -> SafeString:
    """A reply's markdown as safe HTML."""
    return mark_safe(sanitize(_md.render(text)))  # noqa: S308 - sanitized just above


def _cache_key(text: str) -> str:
    return "md:v1:" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def render_many(texts: Iterable[str]) -> list[SafeString]:
    """Render several replies, reusing earlier renderings from the cache (one round trip each way).

    A finished reply never changes, so its HTML is keyed by its text alone.
    """
    texts = list(texts)
    keys = [_cache_key(t) for t in texts]
    cached: dict[str, str] = cache.get_many(set(keys)) if keys else {}
    fresh: dict[str, str] = {}
    out = []
    for text, key in zip(texts, keys, strict=True):
        html = cached.get(key) or fresh.get(key)
        if html is None:
            html = fresh[key] = str(render_markdown(text))
        out.append(mark_safe(html))  # noqa: S308 - produced by render_markdown (sanitized)
    if fresh:
        cache.set_many(fresh, timeout=7 * 24 * 3600)
    return out
