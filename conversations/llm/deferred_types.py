"""The OpenAI SDK's type packages run their `__init__` when a name is first asked of them, not on import.

`import openai` loads 541 modules of its own, and most of them are type definitions the site never uses. Two
package `__init__` files do it: `openai.types` imports every type the SDK has (graders and evals
among them), and `openai.types.responses` imports all 247 modules of the Responses API, because the
SDK's `openai.lib` imports one module from inside it. A daphne process held about 9 MB more after
its first reply for that (docs/performance.md, twelfth session).

`install()` defers the packages under `openai.types` (chatsite/deferred.py): importing a module inside
them works as usual, and the first name asked of a package itself runs its real `__init__` then. A reply
and the model list run neither: `import openai` loads 156 modules. The Anthropic SDK is not deferred:
its own modules ask names of its type packages as they load, so deferring them kept nothing out.

Installed by `conversations/llm/__init__.py`, which loads before the adapter imports the SDK. If the
SDK's types were already imported, nothing changes for them. `CHAT_DEFER_SDK_TYPES=0` leaves the
finder out (the benchmark's `eager-sdk-types` variant).
"""

from __future__ import annotations

import os

from chatsite.deferred import DeferredPackage, defer, deferred

__all__ = ["DeferredPackage", "deferred", "install"]

PREFIX = "openai.types"


def install() -> None:
    """Defer the SDK's type packages (once), unless `CHAT_DEFER_SDK_TYPES=0`."""
    if os.environ.get("CHAT_DEFER_SDK_TYPES", "1") != "0":
        defer(PREFIX)
