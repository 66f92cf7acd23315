"""The OpenAI SDK's type packages run their `__init__` when a name is first asked of them, not on import.

`import openai` loads 541 modules of its own, and most of them are type definitions the site never uses. Two
package `__init__` files do it: `openai.types` imports every type the SDK has (graders and evals
among them), and `openai.types.responses` imports all 247 modules of the Responses API, because the
SDK's `openai.lib` imports one module from inside it. A daphne process held about 9 MB more after
its first reply for that (docs/performance.md, twelfth session).

`install()` puts a finder first on `sys.meta_path`. For a package under `openai.types` it returns a
module whose `__init__` has not run yet: importing a module inside it (`openai.types.chat.chat_completion`)
works as usual, and the first name asked of the package itself (`from openai.types import ChatModel`,
`openai.types.Batch`, a star import) runs the real `__init__` there and then, once. Nothing else
changes: the modules, classes and names are the SDK's own, loaded from its files. Modules that are
not packages, and other SDKs, are left to the usual finders. The Anthropic SDK is not deferred: its
own modules ask names of its type packages as they load, so deferring them kept nothing out.

Installed by `conversations/llm/__init__.py`, which loads before the adapter imports the SDK. If the
SDK's types were already imported, nothing changes for them. `CHAT_DEFER_SDK_TYPES=0` leaves the
finder out (the benchmark's `eager-sdk-types` variant).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

PREFIX = "openai.types"

_lock = threading.RLock()


class DeferredPackage(ModuleType):
    """A package whose `__init__` runs when a name it does not hold yet is first asked of it."""

    def __getattr__(self, name: str) -> Any:
        # The import system asks packages for dunders (`__path__`, `__spec__`, ...) it sets itself;
        # a star import asks `__all__`, which only the real `__init__` can answer.
        if name.startswith("__") and name != "__all__":
            raise AttributeError(name)
        with _lock:  # one thread runs the `__init__`; another asking meanwhile waits for its names
            loader = self.__dict__.pop("_deferred_loader", None)
            if loader is not None:
                try:
                    loader.exec_module(self)
                except BaseException:
                    self.__dict__["_deferred_loader"] = loader  # failed: the next name asked tries again
                    raise
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None


def deferred(module: ModuleType) -> bool:
    """Whether `module`'s `__init__` is still waiting for its first name."""
    return "_deferred_loader" in module.__dict__


class _Loader(importlib.abc.Loader):
    def __init__(self, real: importlib.abc.Loader) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return DeferredPackage(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        module.__dict__["_deferred_loader"] = self.real

    def __getattr__(self, name: str) -> Any:
        # The rest of the real loader's interface (its source for tracebacks, its resource reader).
        return getattr(self.real, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != PREFIX and not fullname.startswith(PREFIX + "."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or spec.submodule_search_locations is None:
            return None  # a plain module (or nothing): the usual finders
        spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Put the finder first on `sys.meta_path` (once)."""
    if os.environ.get("CHAT_DEFER_SDK_TYPES", "1") == "0":
        return
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
