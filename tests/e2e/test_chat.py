"""The conversation in a real browser: sign-up, new chat with a persona, streaming, stop, reconnects,
two tabs, regenerate and edit, inline errors, and messages full of XSS payloads."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from conversations.models import Message
from tests.e2e.conftest import db, screenshot
from tests.e2e.helpers import (
    REPLY_TIMEOUT,
    assembled_text,
    connected,
    last_reply,
    reply_ends,
    reply_length,
    reply_through_dropped_sockets,
    send,
    until,
)
from tests.factories import default_persona, make_conversation, make_persona
from tests.fakes.provider import Reply

pytestmark = pytest.mark.asyncio(loop_scope="session")

CONVERSATION_URL = re.compile(r"/conversations/[0-9a-f-]{36}/$")


def words(n: int, prefix: str = "word") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


async def test_it_signs_up_and_lands_on_a_new_chat(web, server):
    await db(default_persona)
    page = await web.page(path="/")
    await expect(page).to_have_url(re.compile(r"/accounts/login/"))
    await page.goto("/accounts/signup/")
    await screenshot(page, "signup")
    await page.get_by_label("Email").fill("dana@example.com")
    await page.get_by_label("Username").fill("dana")
    await page.locator("#id_password1").fill("a long pass phrase 42")
    await page.locator("#id_password2").fill("a long pass phrase 42")
    await page.locator("form button[type=submit]").click()
    await expect(page).to_have_url(f"{server.url}/")
    await expect(page.get_by_role("heading", name="New chat")).to_be_visible()
    await expect(page.get_by_role("radio", name=re.compile("Assistant"))).to_be_checked()
    await expect(page.locator("#thread-list")).to_contain_text("No conversations yet")
    await screenshot(page, "empty")
    assert await web.csp_violations(page) == []


async def test_it_starts_a_chat_with_a_chosen_persona_and_streams_the_reply(web, alice, _provider_server):
    await db(default_persona)
    await db(make_persona, "poet", name="Poet", description="Answers in verse.", system_prompt="You are a poet.")
    text = words(70) + "."
    _provider_server.script(Reply(text=text, token_delay=0.03))
    page = await web.page(alice, "/conversations/new/")
    await expect(page.get_by_text("Answers in verse.")).to_be_visible()
    await page.get_by_role("radio", name=re.compile("Poet")).check()
    await send(page, "Write me a poem")

    await expect(page).to_have_url(CONVERSATION_URL)
    await expect(page.locator(".chat-meta")).to_contain_text("Poet")
    await expect(page.locator(".chat-meta")).to_contain_text("gpt-test")
    await expect(page.locator("article.msg-user .msg-content")).to_have_text("Write me a poem")
    await until(page, "document.querySelector('article.msg-assistant .msg-content')?.textContent.length > 0")
    lengths = []
    for _ in range(6):
        lengths.append(await reply_length(page))
        await page.wait_for_timeout(150)
    await expect(page.locator("#stop")).to_be_visible()
    await expect(page.locator("#send")).to_be_disabled()
    await screenshot(page, "streaming")
    await reply_ends(page)

    # It grew in place, a little at a time, before it ended.
    assert lengths == sorted(lengths), lengths
    assert len(set(lengths)) >= 4, lengths
    assert lengths[-1] < len(text)
    await expect(last_reply(page).locator(".msg-content")).to_have_text(text)
    await expect(page.locator("#stop")).to_be_hidden()
    # Screen readers heard the reply through the polite live region.
    await expect(page.locator("#announcer")).to_contain_text("word69")
    # The chosen persona's system prompt went to the provider, first.
    chat = [r for r in _provider_server.requests if r.json.get("stream")]
    assert chat[0].json["messages"][0] == {"role": "system", "content": "You are a poet."}

    await page.reload()
    current = page.locator("#thread-list .thread.current")
    await expect(current).to_have_text(re.compile("Write me a poem"))
    await expect(last_reply(page).locator(".msg-content")).to_have_text(text)
    assert await web.csp_violations(page) == []


async def test_it_stops_a_reply_and_keeps_what_was_written(web, alice, _provider_server):
    conversation = await db(make_conversation, alice)
    # Long enough (a minute at this pace) that a loaded machine cannot finish it before Stop lands.
    text = words(2000)
    _provider_server.script(Reply(text=text, token_delay=0.03))
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await connected(page)
    await send(page, "Tell me everything")
    await until(
        page, "document.querySelector('article.msg-assistant .msg-content')?.textContent.length > 40", timeout=30
    )
    await page.get_by_role("button", name="Stop").click()
    await reply_ends(page, "stopped")
    await expect(last_reply(page).locator(".msg-note")).to_have_text("Stopped.")
    shown = (await last_reply(page).locator(".msg-content").text_content()).strip()
    assert text.startswith(shown) and 0 < len(shown) < len(text)
    stored = await db(lambda: Message.objects.filter(conversation=conversation, role="assistant").get())
    assert (stored.status, stored.content.strip()) == ("stopped", shown)
    # The composer is usable again at once.
    await page.locator("#composer-input").fill("Thanks")
    await expect(page.locator("#send")).to_be_enabled()


async def test_it_shows_the_exact_text_after_the_socket_drops_mid_reply(web, alice, _provider_server):
    conversation = await db(make_conversation, alice)
    text = "Ünïcödé 漢字 🎉 " + words(160, "t") + " end 🎈"
    _provider_server.script(Reply(text=text, token_delay=0.015))
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await connected(page)
    reply_id = await reply_through_dropped_sockets(page, drop_at=(60, 400))

    assert await assembled_text(page, reply_id) == text  # what the deltas built: exactly the stored reply
    await expect(last_reply(page).locator(".msg-content")).to_have_text(text)


async def test_it_shows_the_same_stream_live_in_two_tabs(web, alice, _provider_server):
    conversation = await db(make_conversation, alice)
    text = words(60, "live")
    _provider_server.script(Reply(text=text, token_delay=0.04))
    ctx = await web.context(alice)
    first = await ctx.new_page()
    second = await ctx.new_page()
    for page in (first, second):
        page.on("pageerror", lambda exc: web.errors.append(str(exc)))
        await page.goto(f"/conversations/{conversation.pk}/")
        await connected(page)
    await send(first, "Both of you, watch")
    await expect(second.locator("article.msg-user .msg-content")).to_have_text("Both of you, watch")
    await until(second, "document.querySelector('article.msg-assistant .msg-content')?.textContent.length > 0")
    seen = []
    for _ in range(5):
        seen.append(await reply_length(second))
        await second.wait_for_timeout(150)
    await reply_ends(second)
    await reply_ends(first)
    assert seen == sorted(seen) and len(set(seen)) >= 3, seen
    for page in (first, second):
        await expect(last_reply(page).locator(".msg-content")).to_have_text(text)
    await expect(second.locator("#send")).to_be_disabled()  # nothing typed there


async def test_it_regenerates_the_last_reply_and_resends_an_edited_message(web, alice, _provider_server):
    conversation = await db(make_conversation, alice)
    _provider_server.script(
        Reply(text="First answer."), Reply(text="Second answer."), Reply(text="Answer to the edit.")
    )
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await connected(page)
    await send(page, "Question one")
    await reply_ends(page)
    await expect(last_reply(page).locator(".msg-content")).to_have_text("First answer.")

    await last_reply(page).hover()
    await last_reply(page).get_by_role("button", name="Regenerate").click()
    await expect(page.locator("article.msg-assistant")).to_have_count(1)
    await expect(last_reply(page).locator(".msg-content")).to_have_text("Second answer.", timeout=REPLY_TIMEOUT)
    await reply_ends(page)

    user = page.locator("article.msg-user")
    await user.hover()
    await user.get_by_role("button", name="Edit").click()
    editor = page.get_by_role("textbox", name="Edit your message")
    await expect(editor).to_have_value("Question one")
    await editor.fill("Question two")
    await editor.press("Enter")
    await expect(page.locator("article.msg-user .msg-content")).to_have_text("Question two")
    await expect(last_reply(page).locator(".msg-content")).to_have_text("Answer to the edit.", timeout=REPLY_TIMEOUT)
    await reply_ends(page)
    await expect(page.locator("article.msg")).to_have_count(2)

    await page.reload()
    await expect(page.locator("article.msg-user .msg-content")).to_have_text(["Question two"])
    await expect(page.locator("article.msg-assistant .msg-content")).to_have_text(["Answer to the edit."])
    last_request = [r for r in _provider_server.requests if r.json.get("stream")][-1]
    sent = " ".join(m["content"] for m in last_request.json["messages"])
    assert "Question two" in sent and "Question one" not in sent


async def test_it_shows_errors_inline_with_what_to_do_next(web, alice, _provider_server):
    conversation = await db(make_conversation, alice)
    _provider_server.script(Reply(status=401, error_type="authentication_error", error_message="bad key"))
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await connected(page)
    await send(page, "Hello?")
    await reply_ends(page, "error")
    note = last_reply(page).locator(".msg-note")
    await expect(note).to_contain_text("The provider rejected the key: ask your admin")
    await expect(note.get_by_role("button", name="Try again")).to_have_count(0)
    await screenshot(page, "error")

    # A provider that keeps answering 429: the server (maybe after retrying) says when to try again.
    _provider_server.script(*[Reply(status=429, retry_after=2) for _ in range(4)])
    await send(page, "And now?")
    await reply_ends(page, "error")
    note = last_reply(page).locator(".msg-note")
    await expect(note).to_contain_text("rate limiting")
    await expect(note).to_contain_text(re.compile(r"Try again in \d+ s"))
    retry = note.get_by_role("button", name="Try again")
    await expect(retry).to_be_disabled()
    await expect(retry).to_be_enabled(timeout=5000)
    _provider_server.clear()
    _provider_server.script(Reply(text="Recovered."))
    await retry.click()
    await expect(last_reply(page).locator(".msg-content")).to_have_text("Recovered.", timeout=REPLY_TIMEOUT)
    await reply_ends(page)
    await expect(page.locator("article.msg-assistant")).to_have_count(2)


XSS_PAYLOADS = [
    "<script>window.__xss = 1; alert('script')</script>",
    "<img src=x onerror=\"window.__xss = 2; alert('img')\">",
    "[click me](javascript:window.__xss=3;alert('link'))",
    "[spaced](  javascript:alert('spaced') )",
    "![pic](javascript:alert('imgsrc'))",
    '![x" onerror="window.__xss=4;alert(1)](http://127.0.0.1:9/x.png)',
    "<a href=\"javascript:alert('a')\">a tag</a>",
    "<svg onload=\"window.__xss = 5; alert('svg')\"><circle r=5></circle></svg>",
    "<iframe src=\"javascript:alert('iframe')\"></iframe>",
    "[ref link][r]\n\n[r]: javascript:alert('ref')",
    "<details open ontoggle=\"window.__xss=6;alert('toggle')\">x</details>",
    "```html\n<script>alert('fenced')</script>\n```",
    "<style>body { display: none }</style>",
    "[data link](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "<a href=\"jav&#x09;ascript:alert('entity')\">entity</a>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert('mxss')>",
    "<form action=\"javascript:alert('form')\"><button>go</button></form>",
    "Autolink <javascript:alert('autolink')> and <http://example.com>",
]


async def _assert_nothing_ran(web, page):
    assert web.dialogs == []
    assert await page.evaluate("window.__xss === undefined")
    dangerous = await page.evaluate(
        """(() => {
        const contents = [...document.querySelectorAll('#messages .msg-content')];
        // Everything the message put there (not our own copy buttons on code blocks).
        const inside = (sel) => contents.flatMap((c) => [...c.querySelectorAll(sel)])
          .filter((e) => !e.closest('.code-bar'));
        const bad = inside('script, iframe, svg, img, style, form, object, embed, math, details').map((e) => e.tagName);
        for (const el of inside('*')) {
          for (const a of el.attributes) {
            if (/^on/i.test(a.name)) bad.push(el.tagName + ' ' + a.name);
            if (/^\\s*(javascript|data|vbscript):/i.test(a.value)) bad.push(el.tagName + ' ' + a.name + '=' + a.value);
          }
        }
        return bad;
      })()"""
    )
    assert dangerous == []


async def test_it_never_runs_script_from_a_message(web, alice, _provider_server):
    payload = "\n\n".join(XSS_PAYLOADS)
    conversation = await db(make_conversation, alice)
    _provider_server.script(Reply(text=payload, token_delay=0.001))
    # The CSP would block inline script anyway: turn it off so the sanitizers alone are tested.
    page = await web.page(alice, f"/conversations/{conversation.pk}/", bypass_csp=True)
    await connected(page)
    await send(page, payload)
    await reply_ends(page)
    # The user's message shows exactly as typed.
    assert await page.locator("article.msg-user .msg-content").text_content() == payload
    await _assert_nothing_ran(web, page)
    # Point at and focus everything in the messages: still nothing runs.
    await page.evaluate(
        """document.querySelectorAll('#messages .msg-content *').forEach((e) => {
          for (const type of ['mouseover', 'mouseenter', 'focus', 'animationstart']) e.dispatchEvent(new Event(type));
          if (e.focus) e.focus();
        })"""
    )
    await _assert_nothing_ran(web, page)
    # The server's rendering of the stored history (the page before any script) is just as inert.
    await page.reload()
    await connected(page)
    assert await page.locator("article.msg-user .msg-content").text_content() == payload
    await _assert_nothing_ran(web, page)
    assert await last_reply(page).locator("a", has_text="click me").count() == 0


SANITIZER_SAMPLES = [
    # (No handler or style attribute: the CSP reports them even in DOMPurify's parse, failing a browser test.)
    '<p id="i" class="c" data-x="1" hidden>hi<img alt="a"></p>',
    '<a href="javascript:alert(1)" title="t" target="_self" rel="opener">a</a><a href="https://example.com/">b</a>',
    '<a href="mailto:x@example.com">m</a><a href="/relative">r</a><a href="data:text/html,x">d</a>',
    '<a href="ftp://example.com/">f</a><a href="vbscript:x">v</a>',
    '<ul class="contains-task-list evil"><li class="task-list-item x">'
    '<input type="text" checked class="task-list-item-checkbox y" name="n"> t</li></ul>',
    '<ol start="3" reversed><li>x</li></ol><pre><code class="language-python evil language-">c</code></pre>',
    '<p class="language-py">p</p><code class="lang-js">j</code>',
    '<table><thead><tr><th align="center">h</th><th align="justify">i</th></tr></thead>'
    '<tbody><tr><td align="left" valign="top">d</td></tr></tbody></table>',
    "<h1>a</h1><h6>b</h6><blockquote><del>d</del><s>s</s><em>e</em><strong>s</strong><br><hr></blockquote>",
    "<div><span>kept text</span></div><script>gone()</script><iframe src=x></iframe><noscript>n</noscript>",
]


async def test_it_sanitizes_in_the_browser_with_the_servers_allow_list(web, alice):
    """static/js/markdown.js applies the allow-list the page got from conversations/rendering.py, as nh3 does."""
    from conversations.rendering import sanitize
    from tests.test_rendering import Elements

    def structure(html: str) -> list[tuple[str, dict[str, str]]]:
        return [(tag, {k: v or "" for k, v in attrs.items()}) for tag, attrs in Elements(html).tags]

    conversation = await db(make_conversation, alice)
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await connected(page)
    for html in SANITIZER_SAMPLES:
        in_browser = await page.evaluate("(html) => window.ChatMarkdown.sanitize(html)", html)
        assert in_browser is not None, "the page has no allow-list"
        assert structure(in_browser) == structure(sanitize(html)), html


async def test_stop_works_again_after_a_stop_was_lost(web, alice, _provider_server):
    """The stop frame is lost on the way (the socket dropped as it went out, say): Stop does not stay
    dead; after a few seconds without `end` it works again, and the second stop lands."""
    conversation = await db(make_conversation, alice)
    text = words(3000, "w")
    _provider_server.script(Reply(text=text, token_delay=0.01))
    page = await web.page(alice, f"/conversations/{conversation.pk}/")
    await connected(page)
    await send(page, "Go on for a long while")
    await until(page, "document.querySelector('article.msg-assistant .msg-content')?.textContent.length > 40")
    await page.evaluate("window.__sockets.loseNext('stop')")
    stop = page.get_by_role("button", name="Stop")
    await stop.click()
    await expect(stop).to_be_disabled()
    await expect(stop).to_be_enabled(timeout=8_000)  # before: disabled for good, the reply ran on
    assert await last_reply(page).get_attribute("data-status") == "streaming"
    await stop.click()
    await reply_ends(page, "stopped")
    stored = await db(lambda: Message.objects.filter(conversation=conversation, role="assistant").get())
    assert stored.status == "stopped" and 0 < len(stored.content) < len(text)
