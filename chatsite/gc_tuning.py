"""What lives as long as the process, taken out of the garbage collector's view.

Python's full collection walks every object the collector tracks. In a daphne process that is mostly
what start-up loaded (Django, the apps, the URL conf) and, after the first reply, a provider SDK's
modules and types: hundreds of thousands of objects that live until the process ends. A full
collection among live streams then holds the event loop for as long as that walk takes: measured at
200 streams, 157 ms for one (docs/performance.md, "Speed, second round"). `gc.freeze()` moves every
object alive at that moment to a generation the collector never walks; objects freed by reference
counting are still freed. Called once start-up is done (chatsite/asgi.py) and once a provider's SDK
is first loaded (conversations/llm/). `CHAT_GC_FREEZE=0` turns it off.

Start-up also raises the youngest generation's threshold from 700 to 10,000 allocations
(`YOUNG_THRESHOLD`): every streamed token allocates a few short-lived containers, so at 200 streams the
collector ran 215 young, 19 middle and one full collection in a benchmark phase (141 ms in all, the
full one 18 ms); with 10,000, 13 young ones (38 ms) and none older (docs/performance.md). What a
young collection walks is what survived since the last one, so a rarer one costs little more.
`CHAT_GC_FREEZE=0` leaves the thresholds alone too.
"""

from __future__ import annotations

import gc
import os

ENABLED = os.environ.get("CHAT_GC_FREEZE", "1") != "0"
YOUNG_THRESHOLD = 10_000


def settle(*, collect: bool = False) -> None:
    """Freeze what is alive now (after a collection, with `collect`: at start-up, not mid-request)."""
    if not ENABLED:
        return
    if collect:
        gc.collect()
        _, middle, old = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    gc.freeze()
