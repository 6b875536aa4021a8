"""The app the bench's mesh nodes (and every integration test) run: python-socketio behind
SioMesh, configured from ``SIOMESH_*`` environment variables. Events: those of
:func:`~siomesh.benchkit.apps.events.register` (``echo``, ``whoami``, ``join``, ``broadcast``),
plus ``clientaddr`` (acks the client address and X-Forwarded-For the app was given at the
handshake) and ``say`` (a message to a room).

Knobs (environment): ``ECHO_MAX_BUFFER`` (max_http_buffer_size), ``ECHO_PING_INTERVAL`` and
``ECHO_PING_TIMEOUT`` (seconds), ``ECHO_CORS_ORIGINS`` (comma separated, default ``*``).
"""

from __future__ import annotations

import os
from typing import Any

import socketio

from siomesh import SioMesh

from .events import register

NODE = os.environ.get("SIOMESH_NODE_URL", "")


def _cors() -> str | list[str]:
    raw = os.environ.get("ECHO_CORS_ORIGINS", "*")
    return "*" if raw == "*" else [o.strip() for o in raw.split(",") if o.strip()]


sio = socketio.AsyncServer(
    async_mode="asgi",
    cors_allowed_origins=_cors(),
    max_http_buffer_size=int(os.environ.get("ECHO_MAX_BUFFER", "1000000")),
    ping_interval=float(os.environ.get("ECHO_PING_INTERVAL", "25")),
    ping_timeout=float(os.environ.get("ECHO_PING_TIMEOUT", "20")),
)
register(sio, NODE)


@sio.event  # type: ignore[untyped-decorator]
async def clientaddr(sid: str) -> dict[str, Any]:
    environ = sio.get_environ(sid) or {}
    scope = environ.get("asgi.scope", {})
    client = scope.get("client")
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
    return {
        "client": list(client) if client else None,
        "x-forwarded-for": headers.get("x-forwarded-for"),
        "mesh-headers": sorted(k for k in headers if k.startswith("x-siomesh-")),
    }


@sio.event  # type: ignore[untyped-decorator]
async def say(sid: str, data: Any) -> bool:
    room, message = data["room"], data["message"]
    await sio.emit("said", {"room": room, "message": message}, room=room)
    return True


app = SioMesh(socketio.ASGIApp(sio))
