"""Markdown rendering of replies: GitHub-flavoured, sanitized, and never a way to run script."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from conversations import rendering
from conversations.rendering import render_many, render_markdown, sanitize


class Elements(HTMLParser):
    """Every start tag with its attributes, to inspect rendered HTML structurally."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for t, attrs in self.tags if t == tag]


XSS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](  javascript:alert(1) )",
    "![img](javascript:alert(1))",
    '![x" onerror="alert(1)](http://example.com/x.png)',
    '<a href="javascript:alert(1)">a</a>',
    "<svg onload=alert(1)>",
    "<iframe src=javascript:alert(1)></iframe>",
    "[r]\n\n[r]: javascript:alert(1)",
    "<details open ontoggle=alert(1)>",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    '<a href="jav&#x09;ascript:alert(1)">x</a>',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<javascript:alert(1)>",
    "```\n</code></pre><script>alert(1)</script>\n```",
    "`<img src=x onerror=alert(1)>`",
    "| a |\n|---|\n| <img src=x onerror=alert(1)> |",
    "- [ ] <script>alert(1)</script>",
]


@pytest.mark.parametrize("payload", XSS)
def test_it_never_renders_anything_that_can_run(payload):
    html = render_markdown(payload)
    tags = Elements(html)
    allowed = rendering.ALLOWED_TAGS
    for tag, attrs in tags.tags:
        assert tag in allowed, (tag, html)
        assert tag not in {"script", "img", "iframe", "svg", "style", "math"}
        for name, value in attrs.items():
            assert not name.startswith("on"), html
            if name in {"href", "src"}:
                assert value and value.split(":", 1)[0].lower() in {"http", "https", "mailto"}, html


def test_it_shows_raw_html_from_the_model_as_text():
    html = render_markdown("Use <b>bold</b> and <script>alert(1)</script>")
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "&lt;script&gt;" in html
    assert "<script" not in html and "<b>" not in html


def test_it_renders_github_tables_with_alignment_the_csp_allows():
    html = render_markdown("| left | mid | right |\n|:--|:-:|--:|\n| a | b | c |")
    cells = Elements(html)
    assert [a.get("align") for a in cells.named("th")] == ["left", "center", "right"]
    assert [a.get("align") for a in cells.named("td")] == ["left", "center", "right"]
    assert "style=" not in html  # inline styles are refused by the page's CSP


def test_it_keeps_a_code_blocks_language_for_highlighting_and_drops_odd_classes():
    html = render_markdown("```python\nprint('hi')\n```\n\n```bad\" onclick=\"x\ny\n```")
    codes = Elements(html).named("code")
    assert codes[0] == {"class": "language-python"}
    assert codes[1] == {}
    assert "print(&#39;hi&#39;)" in html or "print('hi')" in html


def test_it_renders_lists_emphasis_strikethrough_and_task_lists():
    html = render_markdown("- **bold** *em* ~~gone~~\n- [x] done\n- [ ] todo\n\n1. one\n2. two")
    tags = Elements(html)
    assert tags.named("strong") and tags.named("em") and tags.named("s")
    assert len(tags.named("ol")) == 1
    boxes = tags.named("input")
    assert [b.get("type") for b in boxes] == ["checkbox", "checkbox"]
    assert all("disabled" in b for b in boxes)
    assert ["checked" in b for b in boxes] == [True, False]


def test_it_links_urls_with_a_scheme_but_not_file_names():
    html = render_markdown("See https://example.com/docs and edit settings.py or README.md")
    links = Elements(html).named("a")
    assert [a["href"] for a in links] == ["https://example.com/docs"]
    assert links[0]["target"] == "_blank"
    assert links[0]["rel"] == "noopener noreferrer nofollow"


def test_it_turns_images_into_links_so_nothing_is_fetched_by_itself():
    html = render_markdown("![a chart](https://tracker.example/pixel.png?secret=1)")
    tags = Elements(html)
    assert tags.named("img") == []
    assert tags.named("a")[0]["href"] == "https://tracker.example/pixel.png?secret=1"
    assert "[image: a chart]" in html


def test_it_sanitizes_html_however_it_was_made():
    dirty = '<p onclick="x">hi<img src=x onerror=alert(1)><a href="javascript:alert(1)">a</a><input type="text"></p>'
    clean = sanitize(dirty)
    tags = Elements(clean)
    assert tags.named("img") == []
    assert tags.named("p") == [{}]
    assert "href" not in tags.named("a")[0]
    assert tags.named("input") == [{"type": "checkbox", "disabled": "disabled"}]


def test_it_reuses_earlier_renderings_from_the_cache(monkeypatch):
    texts = ["**one**", "two", "**one**"]
    first = render_many(texts)
    assert first == [render_markdown(t) for t in texts]
    calls = []
    real = rendering.render_markdown
    monkeypatch.setattr(rendering, "render_markdown", lambda t: calls.append(t) or real(t))
    again = render_many(texts + ["new"])
    assert again[:3] == first
    assert calls == ["new"]


def test_it_bounds_the_process_cache_by_size_dropping_the_least_recently_used():
    local = rendering._LocalRenderings(max_chars=10)
    local.set_many({"a": "xxxx", "b": "yyyy"})
    assert local.get(["a"]) == ["xxxx"]  # "a" is now the most recently used
    local.set_many({"c": "zzzz"})
    assert local.get(["a", "b", "c"]) == ["xxxx", None, "zzzz"]
    local.set_many({"huge": "h" * 11})  # larger than the whole cache: not kept, no error
    assert local.get(["huge", "a", "c"]) == [None, "xxxx", "zzzz"]
    local.set_many({"a": "x"})  # replaced: only its new size counts
    assert local.size == 5
    local.set_many({("a", "tuple", 1): "tttt"})  # any hashable key (the page's are tuples)
    assert local.get(["a", "c", ("a", "tuple", 1)]) == ["x", "zzzz", "tttt"] and local.size == 9


# -- the allow-list, one source for nh3 here and DOMPurify in the page -----------------------------------


def _one(html: str, tag: str) -> dict[str, str | None]:
    found = Elements(sanitize(html)).named(tag)
    assert len(found) == 1, (html, sanitize(html))
    return found[0]


def test_it_keeps_exactly_the_tags_of_the_policy():
    policy = rendering.browser_policy()
    for tag in policy["tags"]:
        html = f"<{tag}>x</{tag}>" if tag not in {"br", "hr", "input"} else f"<{tag}>"
        if tag in {"td", "th", "tr", "tbody", "thead"}:
            html = f"<table>{html}</table>"
        assert Elements(sanitize(html)).named(tag), f"{tag} was dropped"
    for tag in ("div", "span", "img", "iframe", "form", "button", "details", "svg", "font"):
        assert not Elements(sanitize(f"<{tag}>x</{tag}>")).named(tag), f"{tag} was kept"
    for tag in policy["clean_content_tags"]:
        assert "gone" not in sanitize(f"<{tag}>gone</{tag}>")


def test_it_keeps_exactly_the_attributes_and_values_of_the_policy():
    policy = rendering.browser_policy()
    for tag, names in policy["attributes"].items():
        attrs = " ".join(f'{n}="1"' if n != "href" else 'href="https://example.com/"' for n in names)
        kept = _one(f"<{tag} {attrs} id=x data-x=1 onclick=alert(1)>y</{tag}>", tag)
        assert set(names) <= set(kept), (tag, kept)
        assert not {"id", "data-x", "onclick"} & set(kept)
    for tag, attrs in policy["values"].items():
        wrap = (lambda h: f"<table><tr>{h}</tr></table>") if tag in {"td", "th"} else (lambda h: h)
        for name, values in attrs.items():
            for value in values:
                assert _one(wrap(f'<{tag} {name}="{value}">y</{tag}>'), tag)[name] == value
            assert _one(wrap(f'<{tag} {name}="bogus">y</{tag}>'), tag).get(name) in (
                None,
                *policy["forced"].get(tag, {}).values(),
            )


def test_it_keeps_exactly_the_classes_of_the_policy():
    policy = rendering.browser_policy()
    for tag, names in policy["classes"].items():
        assert _one(f'<{tag} class="{" ".join(names)} evil">y</{tag}>', tag)["class"] == " ".join(names)
    assert policy["class_patterns"] == {"code": r"language-[A-Za-z0-9-]+"}
    assert _one('<code class="language-c-sharp evil language-">y</code>', "code")["class"] == "language-c-sharp"
    assert "class" not in _one('<code class="language-&lt;x&gt; lang-py">y</code>', "code")
    assert "class" not in _one('<p class="language-py">y</p>', "p")


def test_it_forces_the_policys_values_and_allows_only_its_url_schemes():
    policy = rendering.browser_policy()
    for tag, forced in policy["forced"].items():
        kept = _one(f"<{tag}>y</{tag}>" if tag != "input" else "<input type=text>", tag)
        assert {k: kept[k] for k in forced} == forced
    assert _one('<a href="https://example.com/">y</a>', "a")["rel"] == policy["link_rel"]
    for scheme in policy["url_schemes"]:
        assert _one(f'<a href="{scheme}:x">y</a>', "a")["href"] == f"{scheme}:x"
    for scheme in ("javascript", "data", "vbscript", "ftp", "file"):
        assert "href" not in _one(f'<a href="{scheme}:x">y</a>', "a")
    assert _one('<a href="/relative">y</a>', "a")["href"] == "/relative"


def test_it_hands_the_page_the_allow_list_it_sanitizes_with(client, alice):
    import json
    import re

    client.force_login(alice)
    html = client.get("/", follow=True).content.decode()
    found = re.search(r'<script id="markdown-policy" type="application/json">(.*?)</script>', html, re.S)
    assert found, "the chat page has no markdown-policy json_script"
    assert json.loads(found.group(1)) == rendering.browser_policy()
