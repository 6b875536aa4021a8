"""The test app every integration test runs: python-socketio behind SioMesh, configured from
``SIOMESH_*`` environment variables. Events: ``echo`` (acks its argument back, text or binary),
``whoami`` (acks the node URL), ``join``/``say`` (rooms)."""

from __future__ import annotations

import os
from typing import Any

import socketio

from siomesh import SioMesh

NODE = os.environ.get("SIOMESH_NODE_URL", "")
sio = socketio.AsyncServer(
    async_mode="asgi",
    cors_allowed_origins="*",
    max_http_buffer_size=int(os.environ.get("ECHO_MAX_BUFFER", "1000000")),
)


@sio.event
async def echo(sid: str, data: Any) -> Any:
    return data


@sio.event
async def whoami(sid: str) -> str:
    return NODE


app = SioMesh(socketio.ASGIApp(sio))
