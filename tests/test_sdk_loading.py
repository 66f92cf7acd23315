"""How a provider's SDK is loaded: off the event loop (conversations/llm/__init__.py, `imported`), and
with the OpenAI SDK's type packages running their `__init__` only when a name is asked of them
(conversations/llm/deferred_types.py). Each test runs in a fresh process, where the SDK is not loaded yet."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fakes.provider import Reply
from tests.live import ROOT, server_env


def run(script: str, *args: str, **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=server_env(**env), capture_output=True, text=True,
        timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# The event loop ticks every millisecond while two callers await the Anthropic SDK's import (0.8 s
# here), one of them cancelled 5 ms in; a spy on the import system notes which thread imported the SDK.
IMPORT_SCRIPT = """
import asyncio, json, sys, threading
import django
django.setup()
from conversations import llm
llm.IMPORT_ON_THREAD = sys.argv[1] == "thread"
threads = []

class Spy:
    def find_spec(self, name, path, target=None):
        if name == "anthropic":
            threads.append(threading.current_thread() is threading.main_thread())
        return None

sys.meta_path.insert(0, Spy())

async def main():
    ticks = 0
    done = False

    async def ticker():
        nonlocal ticks
        while not done:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    before = ticks
    # Two callers; the first is cancelled (its reply stopped) while the import runs.
    first = asyncio.create_task(llm.imported("anthropic"))
    second = asyncio.create_task(llm.imported("anthropic"))
    await asyncio.sleep(0.005)
    first.cancel()
    await asyncio.wait([first, second])
    during = ticks - before
    assert second.result() is None
    done = True
    await task
    provider, model = await llm.provider_for("anthropic:claude-test")
    await provider.aclose()
    return during, first.cancelled(), type(provider).__name__, model

during, cancelled, name, model = asyncio.run(main())
out = {"ticks": during, "cancelled": cancelled, "on_main_thread": threads, "provider": name, "model": model}
print(json.dumps(out))
"""


@pytest.mark.parametrize("where", ["thread", "loop"])
def test_a_providers_sdk_is_imported_off_the_event_loop_once(where):
    out = run(IMPORT_SCRIPT, where, ANTHROPIC_API_KEY="test-key")
    assert out["provider"] == "AnthropicProvider" and out["model"] == "claude-test"
    if where == "thread":
        # Imported once, on a thread of its own, while the loop went on turning; the caller cancelled
        # meanwhile was cancelled alone, and the other got the SDK.
        assert out["on_main_thread"] == [False]
        assert out["ticks"] >= 10
        assert out["cancelled"] is True
    else:  # switched off (the benchmark's `sdk-import-on-loop`): the loop stood still meanwhile
        assert out["on_main_thread"] == [True]
        assert out["ticks"] <= 2
        assert out["cancelled"] is False  # it had finished before it could be cancelled


async def test_an_unknown_provider_is_refused_before_any_import():
    from conversations.llm import ProviderError, imported

    with pytest.raises(ProviderError):
        await imported("os")


# A fresh process streams one reply through the real SDK, lists the models, then asks the type
# packages for names: it prints what it streamed, whether each package's `__init__` still waits, how
# many of the Responses API's modules it loaded, and the names' modules.
SDK_TYPES_SCRIPT = """
import asyncio, json, sys
import django
django.setup()
from conversations.llm import ChatRequest, Usage, deferred_types
from conversations.llm.openai import OpenAIProvider
import openai.types, openai.types.responses

async def reply():
    provider = OpenAIProvider()
    try:
        texts = [t async for t in provider.stream(ChatRequest(model="gpt-test", system="Be brief.",
                 messages=[{"role": "user", "content": "Hi"}])) if not isinstance(t, Usage)]
        return "".join(texts), [m for m, _ in await provider.list_models()]
    finally:
        await provider.aclose()

text, models = asyncio.run(reply())
waiting = [deferred_types.deferred(openai.types), deferred_types.deferred(openai.types.responses)]
responses = sum(1 for m in sys.modules if m.startswith("openai.types.responses."))
from openai.types import ChatModel, Batch
from openai.types.responses import Response
from openai.types.shared.chat_model import ChatModel as chat_model
star = {}
exec("from openai.types.graders import *", star)
print(json.dumps({"text": text, "models": models, "waiting": waiting, "responses_modules": responses,
    "names": [Batch.__module__, Response.__module__, "LabelModelGrader" in star, ChatModel is chat_model],
    "waiting_after": [deferred_types.deferred(openai.types), deferred_types.deferred(openai.types.responses)]}))
"""


@pytest.mark.parametrize("defer", ["1", "0"], ids=["deferred", "eager"])
def test_the_sdk_type_packages_load_what_a_reply_uses_and_every_name_when_asked(fake_provider, defer):
    fake_provider.script(Reply(text="Deferred types, real stream."))
    out = run(
        SDK_TYPES_SCRIPT,
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=fake_provider.openai_base_url,
        CHAT_DEFER_SDK_TYPES=defer,
    )
    assert out["text"] == "Deferred types, real stream."
    assert out["models"] == fake_provider.openai_models
    # A reply and the model list ran neither package's `__init__`: of the Responses API's 247 modules,
    # only the one the SDK's own `openai.lib` imports was loaded. Switched off, all of them were.
    if defer == "1":
        assert out["waiting"] == [True, True]
        assert out["responses_modules"] < 5
    else:
        assert out["waiting"] == [False, False]
        assert out["responses_modules"] > 200
    # Every name is still there when asked, from the SDK's own modules; a star import sees them all
    # (graders has no `__all__`: the real `__init__` ran at the import system's ask for it).
    assert out["names"] == ["openai.types.batch", "openai.types.responses.response", True, True]
    assert out["waiting_after"] == [False, False]


# The SDK's import fails once (as a missing or broken package would), then works.
RETRY_SCRIPT = """
import asyncio, json, sys
import django
django.setup()
from conversations import llm
failures = []

class FailOnce:
    def find_spec(self, name, path, target=None):
        if name == "anthropic" and not failures:
            failures.append(name)
            raise ImportError("anthropic is broken")
        return None

sys.meta_path.insert(0, FailOnce())

async def main():
    try:
        await llm.imported("anthropic")
    except ImportError as exc:
        first = str(exc)
    await llm.imported("anthropic")
    return first

print(json.dumps({"first": asyncio.run(main()), "loaded": "anthropic" in sys.modules}))
"""


def test_a_failed_import_fails_its_caller_and_is_tried_again_by_the_next():
    out = run(RETRY_SCRIPT)
    assert out == {"first": "anthropic is broken", "loaded": True}


def test_a_deferred_init_that_fails_raises_and_runs_again_at_the_next_name():
    from conversations.llm.deferred_types import DeferredPackage, deferred

    class Loader:
        runs = 0

        def exec_module(self, module):
            Loader.runs += 1
            if Loader.runs == 1:
                raise ImportError("the package's __init__ failed")
            module.Name = "defined"

    package = DeferredPackage("some.package")
    package.__dict__["_deferred_loader"] = Loader()
    with pytest.raises(ImportError, match="failed"):
        package.Name  # noqa: B018 - the attribute's read runs the __init__
    assert deferred(package)
    assert package.Name == "defined" and not deferred(package)
    with pytest.raises(AttributeError):
        package.Missing  # noqa: B018
    assert Loader.runs == 2
