"""A drained node closes its listening sockets a moment before its server stops
(siomesh.drain.stop_listening): uvicorn's own stop closes every connection without a request in
progress at once, and one whose request the event loop had not read yet is reset, so the
balancer reports a POST it must not resend as failed."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvicorn

from siomesh.drain import stop_listening

REQUEST = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"


async def app(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def _server() -> tuple[uvicorn.Server, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    return server, sock.getsockname()[1]


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(), 3)
    except ConnectionResetError:
        return b"<reset>"


async def test_a_request_accepted_but_not_read_yet_is_answered_not_reset() -> None:
    server, port = await _server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await asyncio.sleep(0.05)  # accepted: an idle connection in the server's state
        assert len(server.server_state.connections) == 1
        # the request reaches the socket, and the server stops before its loop reads it
        writer.write(REQUEST)
        assert await stop_listening(server, grace=0.1) == 1
        await server.shutdown()
        answer = await _read_all(reader)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert b"\r\nhi\r\n" in answer, answer
    finally:
        writer.close()


async def test_new_connections_are_refused_once_it_stops_listening() -> None:
    server, port = await _server()
    try:
        await stop_listening(server, grace=0.0)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
    finally:
        await server.shutdown()


async def test_a_server_without_listeners_is_left_alone() -> None:
    assert await stop_listening(object(), grace=5.0) == 0
