"""A real websocket client (aiohttp) for tests against live daphne processes, with conftest's Socket helpers."""

from __future__ import annotations

import aiohttp
from asgiref.sync import sync_to_async

from tests.conftest import Socket, session_cookie


class LiveCommunicator:
    """The slice of Channels' WebsocketCommunicator that `Socket` uses, over a real connection."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session = session
        self.ws = ws

    async def send_to(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            await self.ws.send_str(text_data)
        else:
            await self.ws.send_bytes(bytes_data or b"")

    async def receive_from(self, timeout: float = 1) -> str:
        message = await self.ws.receive(timeout=timeout)
        if message.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"socket closed or odd frame: {message.type} {message.data!r}")
        return message.data

    async def receive_nothing(self, timeout: float = 0.1) -> bool:
        try:
            await self.ws.receive(timeout=timeout)
        except TimeoutError:
            return True
        return False

    async def disconnect(self) -> None:
        await self.ws.close()
        await self.session.close()


async def connect_live(
    server, user, conversation_id, *, origin: str | None = None, cookie: str | None = None, max_msg_size: int = 4 << 20
):
    """A Socket on a live server's `/ws/conversations/<id>/`, logged in as `user`; frames up to `max_msg_size`
    bytes (aiohttp's default, 4 MiB)."""
    if cookie is None and user is not None:
        cookie = await sync_to_async(session_cookie)(user)
    headers = {"Origin": origin or server.url}
    if cookie:
        headers["Cookie"] = f"sessionid={cookie}"
    session = aiohttp.ClientSession()
    try:
        ws = await session.ws_connect(
            f"{server.ws_url}/ws/conversations/{conversation_id}/", headers=headers, max_msg_size=max_msg_size
        )
    except BaseException:
        await session.close()
        raise
    return Socket(LiveCommunicator(session, ws))
