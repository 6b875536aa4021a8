"""siomesh.sessions.drop_session ends a session so that python-socketio's client reconnects
(an engineio ``disconnect`` would be a *server* disconnect, after which it does not)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import socketio
import uvicorn

from siomesh.sessions import drop_session
from tests.harness.ports import LOOPBACK, free_port


@pytest.fixture
async def server() -> AsyncIterator[tuple[socketio.AsyncServer, str]]:
    sio = socketio.AsyncServer(async_mode="asgi")
    port = free_port()
    config = uvicorn.Config(
        socketio.ASGIApp(sio),
        host=LOOPBACK,
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    srv = uvicorn.Server(config)
    task = asyncio.ensure_future(srv.serve())
    for _ in range(100):
        if srv.started:
            break
        await asyncio.sleep(0.05)
    try:
        yield sio, f"http://{LOOPBACK}:{port}"
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("transports", [["polling"], ["polling", "websocket"], ["websocket"]])
async def test_dropped_client_reconnects_with_a_new_session(
    server: tuple[socketio.AsyncServer, str], transports: list[str]
) -> None:
    sio, url = server
    client = socketio.AsyncClient(reconnection_delay=0.1, reconnection_delay_max=0.2)
    events: list[str] = []
    client.on("connect", lambda: events.append("connect"))
    client.on("disconnect", lambda reason=None: events.append(f"disconnect:{reason}"))
    await asyncio.wait_for(client.connect(url, transports=transports), 10)
    try:
        await asyncio.sleep(0.3)  # let an upgrade finish
        sid = client.eio.sid
        assert await drop_session(sio.eio, sid)
        assert not await drop_session(sio.eio, sid)  # already gone
        for _ in range(100):
            if events.count("connect") >= 2:
                break
            await asyncio.sleep(0.05)
        assert events == ["connect", "disconnect:transport error", "connect"], events
        assert client.eio.sid != sid
    finally:
        # a polling client's disconnect may wait for its pending poll: bounded, not asserted
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(client.disconnect(), 5)
