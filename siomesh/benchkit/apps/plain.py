"""The control app: python-socketio WITHOUT SioMesh, answering the same events as
:mod:`~siomesh.benchkit.apps.echo` (see :func:`~siomesh.benchkit.apps.events.register`).

Behind a non-sticky balancer its polling clients must fail; that failure is what makes the
forwarding tests meaningful. With ``SIOMESH_BENCH_REDIS_URL`` set it runs on
``socketio.AsyncRedisManager`` (the usual sticky + Redis deployment the bench compares with).
Serves 200 at ``/_siomesh/health`` so the same balancer configs and readiness checks work.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from .events import register

NODE = os.environ.get("SIOMESH_NODE_URL", "")
REDIS_URL = os.environ.get("SIOMESH_BENCH_REDIS_URL")

sio = socketio.AsyncServer(
    async_mode="asgi",
    cors_allowed_origins="*",
    ping_interval=float(os.environ.get("ECHO_PING_INTERVAL", "25")),
    ping_timeout=float(os.environ.get("ECHO_PING_TIMEOUT", "20")),
    client_manager=socketio.AsyncRedisManager(REDIS_URL) if REDIS_URL else None,
)
register(sio, NODE)


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
