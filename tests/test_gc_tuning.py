"""What lives as long as a daphne process is frozen out of the garbage collector's walks (chatsite/gc_tuning.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import gc, json
import chatsite.asgi  # what daphne imports
started = gc.get_freeze_count()
from conversations.llm import _make
_make("openai")  # a provider's SDK loaded on first use
first = gc.get_freeze_count()
_make("openai")
print(json.dumps([started, first, gc.get_freeze_count(), gc.get_threshold()[0]]))
"""


def freeze_counts(**env: str) -> list[int]:
    environ = {**os.environ, "DJANGO_SETTINGS_MODULE": "chatsite.settings", "CHAT_IGNORE_DOTENV": "1", **env}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_start_up_and_a_providers_sdk_are_frozen_once():
    started, first, again, young = freeze_counts()
    assert young == 10_000  # the youngest generation collected every 10,000 allocations, not 700
    assert started > 50_000  # Django, the apps, the URL conf
    assert first > started + 20_000  # the openai SDK and its stack
    assert again == first  # once per provider: a later client freezes nothing more


def test_it_can_be_turned_off():
    assert freeze_counts(CHAT_GC_FREEZE="0") == [0, 0, 0, 700]
