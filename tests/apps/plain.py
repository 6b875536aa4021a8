"""Control app: the same events as :mod:`tests.apps.echo` on plain python-socketio, WITHOUT
SioMesh. Behind a non-sticky balancer its polling clients must fail; that failure is what makes
the forwarding tests meaningful. Serves 200 at ``/_siomesh/health`` so the same balancer configs
and readiness checks work."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

NODE = os.environ.get("SIOMESH_NODE_URL", "")

sio = socketio.AsyncServer(
    async_mode="asgi",
    cors_allowed_origins="*",
    ping_interval=float(os.environ.get("ECHO_PING_INTERVAL", "25")),
    ping_timeout=float(os.environ.get("ECHO_PING_TIMEOUT", "20")),
)


@sio.event
async def echo(sid: str, data: Any) -> Any:
    return data


@sio.event
async def whoami(sid: str) -> str:
    return NODE


async def _health(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    found = scope["path"] == "/_siomesh/health"
    body = b'{"status": "serving"}' if found else b"not found"
    await send(
        {
            "type": "http.response.start",
            "status": 200 if found else 404,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


app = socketio.ASGIApp(sio, other_asgi_app=_health)
