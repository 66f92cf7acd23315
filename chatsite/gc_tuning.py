"""What lives as long as the process, taken out of the garbage collector's view.

Python's full collection walks every object the collector tracks. In a daphne process that is mostly
what start-up loaded (Django, the apps, the URL conf) and, after the first reply, a provider SDK's
modules and types: hundreds of thousands of objects that live until the process ends. A full
collection among live streams then holds the event loop for as long as that walk takes: measured at
200 streams, 157 ms for one (docs/performance.md, "Speed, second round"). `gc.freeze()` moves every
object alive at that moment to a generation the collector never walks; objects freed by reference
counting are still freed. Called once start-up is done (chatsite/asgi.py) and once a provider's SDK
is first loaded (conversations/llm/). `CHAT_GC_FREEZE=0` turns it off.
"""

from __future__ import annotations

import gc
import os

ENABLED = os.environ.get("CHAT_GC_FREEZE", "1") != "0"


def settle(*, collect: bool = False) -> None:
    """Freeze what is alive now (after a collection, with `collect`: at start-up, not mid-request)."""
    if not ENABLED:
        return
    if collect:
        gc.collect()
    gc.freeze()
