"""Providers by name: `provider:model` -> a Provider instance (one per event loop) and the model."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import importlib
import threading
import weakref

from django.conf import settings

from chatsite import gc_tuning

from . import deferred_types
from .base import ChatRequest, Provider, ProviderError, Usage

# Before the adapter first imports the SDK: its type packages run their `__init__` only when asked a name.
deferred_types.install()

__all__ = [
    "ChatRequest",
    "Provider",
    "ProviderError",
    "Usage",
    "complete_once",
    "configured_providers",
    "kinds_taken",
    "list_models",
    "provider_for",
]

PROVIDERS = ("openai", "anthropic", "offline")

# SDK clients hold connection pools bound to the event loop that made them.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, ...], Provider]] = (
    weakref.WeakKeyDictionary()
)


def configured_providers() -> set[str]:
    """Providers this site can reach with its settings."""
    found = {"offline"}
    if settings.OPENAI_API_KEY or settings.OPENAI_BASE_URL:
        found.add("openai")
    if settings.ANTHROPIC_API_KEY or settings.ANTHROPIC_BASE_URL:
        found.add("anthropic")
    return found


# What each provider's models take besides text, until the model registry says per model:
# OpenAI reads images (and PDFs as their extracted text); Anthropic reads images and PDFs natively;
# the offline demo reads text only (a PDF as its text).
_KINDS = {
    "openai": frozenset({"image", "pdf", "text"}),
    "anthropic": frozenset({"image", "pdf", "text"}),
    "offline": frozenset({"pdf", "text"}),
}


def kinds_taken(spec: str) -> frozenset[str]:
    """The attachment kinds (`image`, `pdf`, `text`) the model `provider:model` can be sent."""
    provider = spec.partition(":")[0]
    return _KINDS.get(provider, frozenset({"text"}))


def split_model(spec: str) -> tuple[str, str]:
    """`provider:model` -> (provider, model); raise ProviderError if malformed or unknown."""
    provider, sep, model = spec.partition(":")
    if not sep or not model or provider not in PROVIDERS:
        raise ProviderError("provider_unavailable", f"Unknown model {spec!r}: use provider:model.")
    return provider, model


def _make(provider: str) -> Provider:
    if provider == "openai":
        from .openai import OpenAIProvider as Made
    elif provider == "anthropic":
        from .anthropic import AnthropicProvider as Made  # type: ignore[assignment]
    else:
        from .offline import OfflineProvider as Made  # type: ignore[assignment]
    if Made not in _settled:
        # The SDK just loaded lives as long as the process: out of the collector's walks (chatsite/gc_tuning.py).
        _settled.add(Made)
        gc_tuning.settle()
    return Made()


_settled: set[type] = set()

# A provider's adapter, and with it its SDK, is imported on a thread of its own the first time it is
# needed, while the event loop goes on: an SDK's import is Python code that runs for about 0.25 s
# (OpenAI) to 1 s (Anthropic), which on the loop would hold every socket of the process that long.
# One import per provider for the whole process; every loop that needs it meanwhile awaits the same one.
# (The benchmark's `sdk-import-on-loop` variant sets IMPORT_ON_THREAD off: docs/performance.md.)
IMPORT_ON_THREAD = True
_imports: dict[str, concurrent.futures.Future[None]] = {}
_imports_lock = threading.Lock()


def _import_on_thread(module: str) -> concurrent.futures.Future[None]:
    done: concurrent.futures.Future[None] = concurrent.futures.Future()
    # Running: an awaiter cancelled meanwhile (a reply stopped) cannot cancel it for the others.
    done.set_running_or_notify_cancel()

    def run() -> None:
        try:
            importlib.import_module(module)
        except BaseException as exc:  # handed to every awaiter: a missing SDK fails the reply, as before
            done.set_exception(exc)
        else:
            done.set_result(None)

    threading.Thread(target=run, name=f"import {module}", daemon=True).start()
    return done


async def imported(provider: str) -> None:
    """`provider`'s adapter and SDK imported, off the event loop (at once when they already are)."""
    if provider not in PROVIDERS:
        raise ProviderError("provider_unavailable", f"Unknown provider {provider!r}.")
    if not IMPORT_ON_THREAD:
        importlib.import_module(f"{__name__}.{provider}")
        return
    with _imports_lock:
        done = _imports.get(provider)
        if done is None:
            done = _imports[provider] = _import_on_thread(f"{__name__}.{provider}")
    if not done.done():
        try:
            await asyncio.wrap_future(done)
        except BaseException:
            if not done.done():
                raise  # this caller was cancelled; the import goes on for the others
    if done.exception() is not None:
        with _imports_lock:  # a failed import is tried again by the next caller, not remembered
            if _imports.get(provider) is done:
                del _imports[provider]
    done.result()


async def provider_for(spec: str) -> tuple[Provider, str]:
    """The provider for `provider:model` in the running event loop, and the bare model name."""
    provider, model = split_model(spec)
    key = (
        provider,
        settings.OPENAI_API_KEY,
        settings.OPENAI_BASE_URL,
        settings.ANTHROPIC_API_KEY,
        settings.ANTHROPIC_BASE_URL,
        # Timeouts are baked into the SDK client: a changed setting needs a new one.
        str(settings.CHAT_CONNECT_TIMEOUT),
        str(settings.CHAT_READ_TIMEOUT),
    )
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    if key not in per_loop:
        await imported(provider)
        if key not in per_loop:  # another task of this loop may have made it meanwhile
            per_loop[key] = _make(provider)
    return per_loop[key], model


async def complete_once(spec: str, request: ChatRequest) -> tuple[str, Usage]:
    """One whole (non-streamed) reply from a fresh client, closed afterwards: for background tasks."""
    provider_name, model = split_model(spec)
    await imported(provider_name)
    provider = _make(provider_name)
    try:
        return await provider.complete(dataclasses.replace(request, model=model))
    finally:
        await provider.aclose()


async def list_models(provider_name: str) -> list[tuple[str, str]]:
    """A configured provider's models as (`provider:model`, display name), from a fresh client."""
    await imported(provider_name)
    provider = _make(provider_name)
    try:
        return [(f"{provider_name}:{model}", label) for model, label in await provider.list_models()]
    finally:
        await provider.aclose()
