"""The real browser: Playwright driving Debian's Chromium against a real daphne on the test database.

One browser per session, one server per module. Tests are async (Playwright's sync API keeps an
event loop running in the main thread, which Django rightly refuses to run the ORM under); ORM work
goes through `db(...)`. Without /usr/bin/chromium the tests skip, and the run ends with a loud
banner; with CHAT_REQUIRE_BROWSER=1 (CI) they fail instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async

from tests.conftest import session_cookie
from tests.live import ROOT, LiveServer

CHROMIUM = os.environ.get("CHAT_CHROMIUM", "/usr/bin/chromium")  # Debian's; another path for other systems
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
SKIP_REASON = f"browser tests need Chromium at {CHROMIUM} (apt-get install -y chromium) and Playwright"

# Records what the page's CSP refused, so a test notices our own inline style or script.
WATCH_PAGE = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
// The tests' view of the page's sockets (the page ships no test hooks): every socket it opens, the
// frames it receives, a way to drop the connection as a network failure would, and to lose frames.
(() => {
  const Native = window.WebSocket;
  const probe = { sockets: [], opened: 0, frames: [], lose: new Set() };
  class Probed extends Native {
    constructor(...args) {
      super(...args);
      probe.sockets.push(this);
      this.addEventListener("open", () => { probe.opened += 1; });
      this.addEventListener("message", (e) => { try { probe.frames.push(JSON.parse(e.data)); } catch (err) {} });
    }
    send(data) {
      try {
        const type = JSON.parse(data).type;
        if (probe.lose.has(type)) { probe.lose.delete(type); return; }  // lost on the way, once
      } catch (err) {}
      super.send(data);
    }
  }
  window.WebSocket = Probed;
  const last = () => probe.sockets[probe.sockets.length - 1];
  window.__sockets = {
    drop: () => { const s = last(); if (s) s.close(); },
    connections: () => probe.opened,
    isConnected: () => !!last() && last().readyState === Native.OPEN,
    frames: () => probe.frames.slice(),
    loseNext: (type) => { probe.lose.add(type); },
  };
})();
"""

_skipped: list[str] = []


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    parallel = config.pluginmanager.hasplugin("xdist")
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
            if parallel:
                # Under `make test` (pytest-xdist, --dist loadgroup) one worker runs every browser test:
                # one Chromium and one live server at a time on a small machine.
                item.add_marker(pytest.mark.xdist_group("browser"))


def _skipped_for_want_of_a_browser(reporter) -> int:
    return len([r for r in reporter.stats.get("skipped", []) if SKIP_REASON in str(r.longrepr)])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say loudly that the browser tests did not run (and once more as the very last line, below)."""
    skipped = _skipped_for_want_of_a_browser(terminalreporter)
    if not skipped:
        return
    bar = "!" * 78
    for line in [
        "",
        bar,
        f"!!  {skipped} BROWSER TESTS WERE SKIPPED: no Chromium at {CHROMIUM}.",
        "!!  The chat page was NOT tested in a real browser. Install it and run again:",
        "!!      apt-get install -y chromium && make test",
        bar,
    ]:
        terminalreporter.write_line(line, red=True, bold=True)


def pytest_unconfigure(config):
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and _skipped_for_want_of_a_browser(reporter):
        reporter.write_line("!!  BROWSER TESTS SKIPPED: no Chromium (see the banner above).", red=True, bold=True)


def _browser_missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return SKIP_REASON
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return SKIP_REASON
    return None


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser():
    missing = _browser_missing()
    if missing:
        if os.environ.get("CHAT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CHAT_REQUIRE_BROWSER=1 but {missing}", pytrace=False)
        pytest.skip(missing)
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        await browser.close()


@pytest.fixture(scope="module")
def server(django_db_setup, _provider_server, tmp_path_factory):
    """One daphne for the module: the fake provider by default, quick retries and flushes."""
    live = LiveServer(
        tmp_path_factory.mktemp("e2e"),
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=_provider_server.openai_base_url,
        CHAT_DEFAULT_MODEL="openai:gpt-test",
        CHAT_OFFLINE_WORD_DELAY="0.005",
        CHAT_FLUSH_INTERVAL="0.2",
        CHAT_RETRY_BASE_DELAY="0.05",
        CHAT_RETRY_MAX_DELAY="0.1",
        LOG_LEVEL="WARNING",
    ).start()
    yield live
    live.stop()


async def db(fn, *args, **kwargs):
    """Run ORM code from an async test (in a worker thread, as Django requires)."""
    return await sync_to_async(fn, thread_sensitive=True)(*args, **kwargs)


class Browsing:
    """A test's view of the browser: contexts on the live server, logged in, watched for errors."""

    def __init__(self, browser, server) -> None:
        self.browser = browser
        self.server = server
        self.contexts: list = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []

    async def context(self, user=None, *, width: int = 1280, height: int = 800, dark: bool = False, **options):
        ctx = await self.browser.new_context(
            base_url=self.server.url,
            viewport={"width": width, "height": height},
            color_scheme="dark" if dark else "light",
            reduced_motion="reduce",
            **options,
        )
        await ctx.add_init_script(WATCH_PAGE)
        if user is not None:
            cookie = await db(session_cookie, user)
            await ctx.add_cookies([{"name": "sessionid", "value": cookie, "url": self.server.url}])
        self.contexts.append(ctx)
        return ctx

    async def page(self, user=None, path: str | None = None, **options):
        ctx = await self.context(user, **options)
        page = await ctx.new_page()
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda msg: msg.type == "error" and self.errors.append(f"console: {msg.text} at {msg.location.get('url')}"),
        )

        async def on_dialog(dialog):
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            await dialog.dismiss()

        page.on("dialog", on_dialog)
        if path is not None:
            await page.goto(path)
        return page

    async def csp_violations(self, page) -> list[str]:
        return await page.evaluate("window.__csp || []")

    async def close(self) -> None:
        for ctx in self.contexts:
            await ctx.close()


@pytest_asyncio.fixture(loop_scope="session")
async def web(browser, server, transactional_db, _provider_server):
    """Per test: a clean fake provider and fresh browser contexts; no page errors allowed."""
    _provider_server.clear()
    browsing = Browsing(browser, server)
    yield browsing
    await browsing.close()
    _provider_server.clear()
    # A socket the test dropped on purpose logs its closing, and a reply replaced (regenerated, edited)
    # just as it ended is gone when the page asks for its final rendering (a 404 the page expects);
    # a refused upload is a 400 the page shows as its reason;
    # anything else (a script error, a failed request) fails the test.
    errors = [
        e
        for e in browsing.errors
        if "WebSocket" not in e
        and not ("404" in e and "/messages/" in e)
        and not ("400" in e and e.rstrip("/").endswith("/attachments"))
    ]
    assert not errors, errors


async def screenshot(page, name: str) -> Path:
    """Save a screenshot of a main state under test-artifacts/screenshots/ (git-ignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path))
    return path
