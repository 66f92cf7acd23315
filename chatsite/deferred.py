"""Packages whose `__init__` runs when a name is first asked of them, not on import.

Some packages' `__init__` imports far more than the modules the site uses from inside them. `defer(prefix)`
puts a finder first on `sys.meta_path`: for a package named `prefix` or under it, it returns a module whose
`__init__` has not run yet. Importing a module inside it (`openai.types.chat.chat_completion`) works
as usual, and the first name asked of the package itself (`from openai.types import ChatModel`,
`openai.types.Batch`, a star import) runs the real `__init__` there and then, once; if that fails, the
next name asked tries again. Nothing else changes: the modules, classes and names are the packages' own,
loaded from their files. Modules that are not packages are left to the usual finders, and a package
already imported stays as it is.

Deferred (docs/performance.md):
- the OpenAI SDK's type packages (`openai.types`), by `conversations/llm/deferred_types.py`: about 9 MB
  of a server after its first reply;
- autobahn's Twisted package (`autobahn.twisted`), by daphne's launcher (`chatsite/serve.py`): its
  `__init__` imports autobahn's WAMP client, and with it cryptography's Rust bindings, which daphne's
  websockets (`autobahn.twisted.websocket`) never use.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

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
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.prefix and not fullname.startswith(self.prefix + "."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or spec.submodule_search_locations is None:
            return None  # a plain module (or nothing): the usual finders
        spec.loader = _Loader(spec.loader)
        return spec


def defer(prefix: str) -> None:
    """Defer the `__init__` of the package `prefix` and of the packages under it (once per prefix)."""
    with _lock:
        if not any(isinstance(finder, _Finder) and finder.prefix == prefix for finder in sys.meta_path):
            sys.meta_path.insert(0, _Finder(prefix))
