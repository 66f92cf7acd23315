"""Markdown -> safe HTML for replies: GitHub-flavoured markdown (markdown-it), then sanitized (nh3).

static/js/markdown.js renders the streaming reply in the browser with the same choices (marked, then
DOMPurify with this module's allow-list, handed to the page by `browser_policy()`): raw HTML shows
as text, images become links (no request leaves the page for a URL the model wrote), table
alignment uses `align` (the CSP forbids inline styles), links open in a new tab without a referrer.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol

import nh3
from django.core.cache import cache
from django.template import Context, Template
from django.template.loader import get_template
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

from .models import Message

# Bump when the rendering rules change: cached renderings from before are then ignored.
_VERSION = 1

# Raw HTML in the markdown is escaped by the renderer (html=False) and sanitized afterwards anyway.
# fuzzy_link off: "settings.py" or "README.md" must not become links; URLs with a scheme do.
_md = MarkdownIt("commonmark", {"html": False, "linkify": True, "typographer": False}).enable(
    ["table", "strikethrough", "linkify"]
)
_md.linkify.set({"fuzzy_link": False})  # type: ignore[union-attr]  # linkify-it-py is installed

# GitHub task lists ("- [ ] todo", "- [x] done"). A substitution on the rendered list items: the
# mdit-py-plugins version costs a third of the whole rendering time.
_TASK = re.compile(r"<li>(\s*<p>)?\[([ xX])\] ")


def _task_box(match: re.Match[str]) -> str:
    checked = ' checked="checked"' if match.group(2) != " " else ""
    box = f'<input class="task-list-item-checkbox" disabled="disabled" type="checkbox"{checked}> '
    return f'<li class="task-list-item">{match.group(1) or ""}{box}'


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

# The allow-list: the one source for both sanitizers. nh3 applies it here; the chat page hands it to
# static/js/markdown.js (`browser_policy()`, through json_script), whose DOMPurify hook applies it there.
ALLOWED_TAGS = {
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "input", "li",
    "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "ol": {"start"},
    "input": {"checked", "disabled"},
}
# Attributes allowed with these values only.
ALLOWED_VALUES = {
    "td": {"align": {"left", "center", "right"}},
    "th": {"align": {"left", "center", "right"}},
    "input": {"type": {"checkbox"}},
}
# Classes allowed by name, and by pattern (a code block's language, for highlighting).
ALLOWED_CLASSES = {
    "ul": {"contains-task-list"},
    "li": {"task-list-item"},
    "input": {"task-list-item-checkbox"},
}
CLASS_PATTERNS = {"code": r"language-[A-Za-z0-9-]+"}
# Attributes always set to these values.
FORCED_VALUES = {
    "a": {"target": "_blank"},
    # A task-list checkbox is a picture of a state, never a control.
    "input": {"type": "checkbox", "disabled": "disabled"},
}
LINK_REL = "noopener noreferrer nofollow"
URL_SCHEMES = {"http", "https", "mailto"}
# Removed with their content (other tags that are not allowed leave their text behind).
CLEAN_CONTENT_TAGS = {"script", "style"}

_CLASS_PATTERNS = {tag: re.compile(pattern) for tag, pattern in CLASS_PATTERNS.items()}


def browser_policy() -> dict[str, Any]:
    """The allow-list as JSON for static/js/markdown.js (sorted lists, regular expressions as strings)."""
    return {
        "tags": sorted(ALLOWED_TAGS),
        "attributes": {tag: sorted(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        "values": {tag: {name: sorted(v) for name, v in attrs.items()} for tag, attrs in ALLOWED_VALUES.items()},
        "classes": {tag: sorted(names) for tag, names in ALLOWED_CLASSES.items()},
        "class_patterns": CLASS_PATTERNS,
        "forced": FORCED_VALUES,
        "link_rel": LINK_REL,
        "url_schemes": sorted(URL_SCHEMES),
        "clean_content_tags": sorted(CLEAN_CONTENT_TAGS),
    }


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    pattern = _CLASS_PATTERNS.get(tag)
    if pattern is not None and attribute == "class":
        return " ".join(c for c in value.split() if pattern.fullmatch(c)) or None
    return value


def sanitize(html: str) -> str:
    """Only the tags markdown produces; links open safely; no script, handler, style or javascript: URL."""
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        clean_content_tags=CLEAN_CONTENT_TAGS,
        # nh3 hands `class` of these tags to the filter above (it may not also be in allowed_classes).
        attributes={**ALLOWED_ATTRIBUTES, **{tag: {"class"} for tag in CLASS_PATTERNS}},
        tag_attribute_values=ALLOWED_VALUES,
        allowed_classes=ALLOWED_CLASSES,
        set_tag_attribute_values=FORCED_VALUES,
        url_schemes=URL_SCHEMES,
        link_rel=LINK_REL,
        attribute_filter=_attribute_filter,
    )


def render_markdown(text: str) -> SafeString:
    """A reply's markdown as safe HTML."""
    return mark_safe(sanitize(_TASK.sub(_task_box, _md.render(text))))  # noqa: S308 - sanitized just above


class _LocalRenderings:
    """Recently used renderings in this process, the least recently used dropped first, bounded by their
    total size (a page of 1,000 replies should not depend on a shared cache that may hold only a few
    hundred entries). An OrderedDict, whose lookups and moves run in C: a hit costs a fraction of a
    microsecond. Every access holds the lock (pages render in several threads)."""

    def __init__(self, max_chars: int) -> None:
        self.items: OrderedDict[Hashable, str | bytes] = OrderedDict()
        self.size = 0
        self.max_chars = max_chars
        self.lock = threading.Lock()

    def get(self, keys: Iterable[Hashable]) -> list[Any]:
        """The value of each key, None where there is none."""
        out: list[Any] = []
        with self.lock:
            items, found, used = self.items, out.append, self.items.move_to_end
            for key in keys:
                value = items.get(key)
                if value is not None:
                    used(key)
                found(value)
        return out

    def set_many(self, values: dict[Any, Any]) -> None:
        with self.lock:
            for key, value in values.items():
                if len(value) > self.max_chars:
                    continue
                old = self.items.pop(key, None)
                self.size += len(value) - (len(old) if old is not None else 0)
                self.items[key] = value
            while self.size > self.max_chars:
                self.size -= len(self.items.popitem(last=False)[1])

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.size = 0


_local = _LocalRenderings(max_chars=32 * 1024 * 1024)
CACHE_TIMEOUT = 7 * 24 * 3600


def _digest(*parts: object) -> str:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).hexdigest()


def _cached(keys: list[str], make: Callable[[list[int]], list[str]]) -> list[SafeString]:
    """Values for `keys` from this process, then the shared cache, else made in one batch by
    `make(indexes)` (and stored in both): at most one round trip to the shared cache each way."""
    found = {k: v for k, v in zip(keys, _local.get(keys), strict=True) if v is not None}
    missing = [k for k in dict.fromkeys(keys) if k not in found]
    if missing:
        shared = cache.get_many(missing)
        found.update(shared)
        _local.set_many(shared)
    todo: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key not in found:
            todo.setdefault(key, i)
    if todo:
        fresh = dict(zip(todo, make(list(todo.values())), strict=True))
        found.update(fresh)
        _local.set_many(fresh)
        cache.set_many(fresh, timeout=CACHE_TIMEOUT)
    return [mark_safe(found[k]) for k in keys]  # noqa: S308 - made by make(): rendered and sanitized


def render_many(texts: Iterable[str]) -> list[SafeString]:
    """Render several replies, reusing earlier renderings (a finished reply never changes: keyed by text)."""
    texts = list(texts)
    keys = [f"md:{_VERSION}:{_digest(t)}" for t in texts]
    return _cached(keys, lambda indexes: [render_markdown(texts[i]) for i in indexes])


@functools.cache
def _message_template() -> tuple[Template, str]:
    """The message template, and a digest of its source (a changed template is a new cache key)."""
    names = ["conversations/_message.html", "conversations/_message_actions.html", "conversations/_versions.html"]
    sources = [get_template(n).template.source for n in names]  # type: ignore[attr-defined]
    return get_template(names[0]).template, _digest(*sources)  # type: ignore[attr-defined]


def versions(siblings: Sequence[int], pk: int) -> dict[str, int | None]:
    """Where a message stands among its versions: `‹ index / count ›` and the ids either side."""
    at = list(siblings).index(pk) if pk in siblings else 0
    return {
        "index": at + 1,
        "count": len(siblings),
        "prev": siblings[at - 1] if at > 0 else None,
        "next": siblings[at + 1] if at + 1 < len(siblings) else None,
    }


class PageRow(Protocol):
    """What a message's HTML depends on but its text and files (`conversations.page.Row`)."""

    @property
    def id(self) -> int: ...
    @property
    def status(self) -> str: ...


def render_rows(
    conversation_id: object,
    rows: Sequence[PageRow],
    siblings: Sequence[tuple[int, ...]],
    hints: dict[str, str],
    load: Callable[[list[Any]], dict[int, Message]],
) -> list[bytes]:
    """Each message as the page shows it (conversations/_message.html, as UTF-8), from the cache where
    it is there, else rendered from the message `load(rows)` returns (with its text and files) and cached.

    A message's HTML depends on its row (`conversations.page.Row`: its status, usage, error, parent,
    `updated_at`) and its versions, and on its text and files, which never change once it has
    finished; so the row and the versions key it, and a cached message costs neither its text nor a
    rendering. The conversation's id is in the key too: message ids alone may repeat across databases
    (tests, a restored backup) sharing a cache. A streaming reply is never cached (its text still grows).
    Rendering 1,000 messages through `{% include %}` costs hundreds of milliseconds; from the cache it
    is a dictionary lookup each. Kept as bytes: a thread in any language joins and goes out as it is
    (as text, one character beyond Latin-1, a `‹` say, made Python copy and encode all of it as wide
    characters).
    """
    template, version = _message_template()
    conv = str(conversation_id)
    keys = [("article", _VERSION, version, conv, row, s) for row, s in zip(rows, siblings, strict=True)]
    found: list[Any] = _local.get(keys)
    if None not in found:
        return found
    streaming = Message.Status.STREAMING
    missing = [i for i, html in enumerate(found) if html is None]
    shared_keys = {i: f"article:{_VERSION}:{version}:{_digest(conv, repr(rows[i]), siblings[i])}" for i in missing}
    shared = cache.get_many([shared_keys[i] for i in missing if rows[i].status != streaming])
    if shared:
        for i in missing:
            found[i] = shared.get(shared_keys[i])
        _local.set_many({keys[i]: found[i] for i in missing if found[i] is not None})
        missing = [i for i in missing if found[i] is None]
    loaded = load([rows[i] for i in missing])
    chosen = []
    for i in missing:
        m = loaded.get(rows[i].id)
        if m is None:
            found[i] = b""  # deleted since the path was read
            continue
        m.versions = versions(siblings[i], m.pk)  # type: ignore[attr-defined]
        chosen.append((i, m))
    replies = [m for _, m in chosen if m.role == Message.Role.ASSISTANT]
    for m, html in zip(replies, render_many(m.content for m in replies), strict=True):
        m.html = html  # type: ignore[attr-defined]
    fresh_local: dict[Hashable, bytes] = {}
    fresh_shared: dict[str, bytes] = {}
    for i, m in chosen:
        found[i] = article = template.render(Context({"m": m, "error_hints": hints})).encode()
        # Only a finished message, as the row read it (a row read as streaming may have finished since).
        if rows[i].status != streaming and m.status == rows[i].status:
            fresh_local[keys[i]] = fresh_shared[shared_keys[i]] = article
    if fresh_local:
        _local.set_many(fresh_local)
        cache.set_many(fresh_shared, timeout=CACHE_TIMEOUT)
    return found
