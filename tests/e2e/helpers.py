"""Small helpers for the browser tests (kept out of conftest so test modules import them plainly)."""

from __future__ import annotations

import asyncio
import time

from playwright.async_api import Page, expect

REPLY_TIMEOUT = 20_000  # ms
SHOWN_REPLY = "document.querySelector('article.msg-assistant .msg-content')"  # the first reply on the page


async def until(page: Page, js: str, timeout: float = 10, interval: float = 0.05):
    """Poll a JS expression until it is truthy (wait_for_function would need eval, which the CSP forbids)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await page.evaluate(js)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {js}")
        await asyncio.sleep(interval)


async def connected(page: Page) -> None:
    await until(page, "window.__sockets && window.__sockets.isConnected()")


async def assembled_text(page: Page, reply_id: int) -> str:
    """The reply's text as the frames the page received build it: `state`, then deltas by offset
    (a delta past the end is a gap the page resumes, so it is skipped, as the page skips it)."""
    text = ""
    for f in await page.evaluate("window.__sockets.frames()"):
        if f["type"] == "state" and f["generating"] and f["generating"]["message_id"] == reply_id:
            text = f["generating"]["text"]
        elif (
            f["type"] == "delta"
            and f["message_id"] == reply_id
            and f["offset"] <= len(text) < f["offset"] + len(f["text"])
        ):
            assert text[f["offset"] :] == f["text"][: len(text) - f["offset"]], "a repeated delta disagrees"
            text = text[: f["offset"]] + f["text"]
    return text


def last_reply(page: Page):
    return page.locator("article.msg-assistant").last


async def reply_ends(page: Page, status: str = "complete") -> None:
    await expect(last_reply(page)).to_have_attribute("data-status", status, timeout=REPLY_TIMEOUT)


async def reply_length(page: Page) -> int:
    text = await page.evaluate(
        "(() => { const r = [...document.querySelectorAll('article.msg-assistant .msg-content')].pop();"
        " return r ? r.textContent.length : 0; })()"
    )
    return int(text)


async def send(page: Page, text: str) -> None:
    """Type into the composer and press Enter, as a person would."""
    await page.locator("#composer-input").fill(text)
    await page.locator("#composer-input").press("Enter")


async def reply_through_dropped_sockets(page: Page, drop_at: tuple[int, ...]) -> int:
    """Send on a connected page and drop its socket once the streaming reply shows more than each of
    `drop_at` characters (the page reconnects in between); the id of the reply, once it has ended.
    The provider's reply must be scripted long enough to pass every mark."""
    await send(page, "Go")
    for i, length in enumerate(drop_at):
        if i:
            await until(page, f"window.__sockets.connections() >= {i + 1}")
        await until(page, f"{SHOWN_REPLY}?.textContent.length > {length}")
        await page.evaluate("window.__sockets.drop()")
    await until(page, f"window.__sockets.connections() >= {len(drop_at) + 1}")
    await reply_ends(page)
    return int(await last_reply(page).get_attribute("data-message-id"))
