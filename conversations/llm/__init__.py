"""Providers by name: `provider:model` -> a Provider instance (one per event loop) and the model."""

from __future__ import annotations

import asyncio
import dataclasses
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


def provider_for(spec: str) -> tuple[Provider, str]:
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
        per_loop[key] = _make(provider)
    return per_loop[key], model


async def complete_once(spec: str, request: ChatRequest) -> tuple[str, Usage]:
    """One whole (non-streamed) reply from a fresh client, closed afterwards: for background tasks."""
    provider_name, model = split_model(spec)
    provider = _make(provider_name)
    try:
        return await provider.complete(dataclasses.replace(request, model=model))
    finally:
        await provider.aclose()


async def list_models(provider_name: str) -> list[tuple[str, str]]:
    """A configured provider's models as (`provider:model`, display name), from a fresh client."""
    provider = _make(provider_name)
    try:
        return [(f"{provider_name}:{model}", label) for model, label in await provider.list_models()]
    finally:
        await provider.aclose()
