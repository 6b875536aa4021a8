"""Socket.IO test clients for the adapter's integration tests (python-socketio AsyncClient)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import socketio


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` every 20 ms for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


class Client:
    """One client connected straight to one node over WebSocket, recording every event."""

    def __init__(self, url: str, namespace: str = "/") -> None:
        self.url = url
        self.namespace = namespace
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.seq: dict[str, list[int]] = {}
        self.disconnected = asyncio.Event()
        self.sid = ""
        self.sio.on("*", self._any, namespace=namespace)
        self.sio.on("seq", self._seq, namespace=namespace)
        self.sio.on("ping", self._ping, namespace=namespace)
        self.sio.on("disconnect", self._disconnect, namespace=namespace)

    async def _any(self, event: str, *args: Any) -> None:
        self.events.append((event, args))

    async def _seq(self, item: list[Any]) -> None:
        self.seq.setdefault(item[0], []).append(item[1])

    async def _ping(self, data: Any) -> Any:
        if isinstance(data, bytes):
            return data[::-1]
        return f"pong:{data}"

    async def _disconnect(self, *args: Any) -> None:
        self.disconnected.set()

    async def connect(self) -> Client:
        await self.sio.connect(
            self.url, transports=["websocket"], namespaces=[self.namespace], wait_timeout=10
        )
        sid = self.sio.get_sid(self.namespace)
        assert sid is not None
        self.sid = sid
        return self

    async def ask(self, event: str, data: Any = None, timeout: float = 15.0) -> Any:
        return await self.sio.call(event, data, namespace=self.namespace, timeout=timeout)

    def got(self, event: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.events if name == event]

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


async def connect_all(urls: list[str], namespace: str = "/") -> list[Client]:
    return list(await asyncio.gather(*(Client(u, namespace).connect() for u in urls)))


async def close_all(clients: list[Client]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
