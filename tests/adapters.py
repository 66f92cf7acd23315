"""What the adapters' own tests share (tests/test_openai_adapter.py, tests/test_anthropic_adapter.py)."""

from __future__ import annotations

from conversations.llm import ChatRequest, Provider, Usage, sse


async def collect(provider: Provider, request: ChatRequest) -> tuple[list[str], Usage | None]:
    """`provider`'s stream for `request`, whole: its pieces of text and its usage; the provider closed after."""
    texts: list[str] = []
    usage = None
    try:
        async for item in provider.stream(request):
            if isinstance(item, Usage):
                usage = item
            else:
                texts.append(item)
    finally:
        await provider.aclose()
    return texts, usage


async def raw_body(response) -> bytes:
    """A streamed response's body read through `sse.reader`, which must be aiohttp's own reader: the SDK's
    aiohttp transport keeps aiohttp's response where the reader looks for it (private attributes of
    httpx2 and of the SDKs' vendored httpx_aiohttp), and an upgrade that moves it fails here instead of
    quietly reading through httpx2 again."""
    read = sse.reader(response.http_response)
    assert read.__self__ is response.http_response.stream._stream._aiohttp_response.content
    body = b""
    while piece := await read():
        body += piece
    return body
