"""The loop-lag probe (conversations/timing.py): how long the server's event loop is held."""

import asyncio
import contextlib
import json
import logging
import time

from conversations import timing


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _logged():
    handler = _Lines()
    logger = logging.getLogger(timing.__name__)
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


async def _app(scope, receive, send):
    pass


def _lag_rows(lines):
    return [json.loads(line.removeprefix("loop-lag ")) for line in lines if line.startswith("loop-lag ")]


async def test_it_reports_the_lag_of_a_loop_blocked_by_a_coroutine(monkeypatch):
    monkeypatch.setenv("CHAT_LOOP_LAG", "1")
    app = timing.with_loop_lag(_app)
    loop = asyncio.get_running_loop()
    with _logged() as lines:
        await app({"type": "http"}, None, None)  # the first connection starts the probe
        try:
            await asyncio.sleep(0.1)
            time.sleep(0.05)  # holds the loop: the probe's wake-up comes ~50 ms late
            deadline = loop.time() + 5
            while not _lag_rows(lines) and loop.time() < deadline:
                await asyncio.sleep(0.05)
        finally:
            timing._probes[loop].stop()
    rows = _lag_rows(lines)
    assert rows, "no loop-lag line within 5 s"
    row = rows[0]
    assert row["max"] >= 40, row
    assert row["n"] == len(row["lags"]) > 1
    assert max(row["lags"]) == row["max"]
    assert row["p50"] <= row["p99"] <= row["max"]
    assert row["from"] < row["to"]


async def test_it_starts_one_probe_per_loop(monkeypatch):
    monkeypatch.setenv("CHAT_LOOP_LAG", "1")
    app = timing.with_loop_lag(_app)
    loop = asyncio.get_running_loop()
    await app({"type": "http"}, None, None)
    first = timing._probes[loop]
    try:
        await app({"type": "websocket"}, None, None)
        assert timing._probes[loop] is first
    finally:
        first.stop()


async def test_without_loop_lag_nothing_runs_or_is_logged(monkeypatch):
    monkeypatch.delenv("CHAT_LOOP_LAG", raising=False)
    app = timing.with_loop_lag(_app)
    assert app is _app  # not even a wrapper: zero cost
    loop = asyncio.get_running_loop()
    with _logged() as lines:
        await app({"type": "http"}, None, None)
        time.sleep(0.05)
        await asyncio.sleep(1.2)  # past a report's interval
    assert loop not in timing._probes
    assert _lag_rows(lines) == []
