"""The offline demo model: no network, no key; a deterministic markdown reply, word by word."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from django.conf import settings

from .base import ChatRequest, Provider, Usage, text_of

DEMO_REPLY = """\
**This is the offline demo model.** It runs with no network and no API key, so it cannot \
really answer yet. You wrote {words} word{plural}, starting with:

> {quote}

What it does show:

- replies stream in **word by word**, and survive a reload or a dropped connection;
- markdown renders safely: *emphasis*, `inline code`, lists and tables;

| provider | setting |
|---|---|
| OpenAI or compatible | `OPENAI_API_KEY`, `OPENAI_BASE_URL` |
| Anthropic | `ANTHROPIC_API_KEY` |

```python
print("Set a key in .env and restart to chat with a real model.")
```
"""


def words_of(text: str) -> list[str]:
    """Split text into word chunks that join back to exactly `text`."""
    chunks = re.findall(r"\s*\S+", text)
    tail = text[len("".join(chunks)) :]
    if tail:
        chunks.append(tail)
    return chunks


def estimate(text: str) -> int:
    return max(1, len(text) // 4)


def demo_text(request: ChatRequest) -> str:
    """The reply the demo model gives to `request`: the same request, the same reply."""
    last = next((text_of(m["content"]) for m in reversed(request.messages) if m["role"] == "user"), "")
    if request.purpose == "summary":
        lines = [text_of(m["content"]).strip().replace("\n", " ")[:60] for m in request.messages]
        return "Earlier, the conversation covered: " + "; ".join(line for line in lines if line) + "."
    if request.purpose == "title":
        return " ".join(last.split()[:5]) or "New chat"
    quote = " ".join(last.split()[:12]) or "(nothing)"
    n = len(last.split())
    return DEMO_REPLY.format(words=n, plural="" if n == 1 else "s", quote=quote)


class OfflineProvider(Provider):
    """Always available; what `make run` talks to when no key is set."""

    async def list_models(self) -> list[tuple[str, str]]:
        return [("demo", "Offline demo")]

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Usage]:
        text = demo_text(request)
        delay = settings.CHAT_OFFLINE_WORD_DELAY if request.purpose == "chat" else 0
        chunks = words_of(text)
        for chunk in chunks:
            if delay:
                await asyncio.sleep(delay)
            yield chunk
        prompt = request.system + "".join(text_of(m["content"]) for m in request.messages)
        yield Usage(input_tokens=estimate(prompt), output_tokens=len(chunks))
