"""The README's app, as users run it under ``uvicorn --workers N`` and gunicorn: a
python-socketio ``AsyncServer`` wrapped in ``SioMesh(app)``, configured by ``SIOMESH_SECRET``
alone (each worker opens its own private peer port and finds the others: siomesh.local_peers).

Events: ``echo`` (acks its argument), ``whoami`` (acks this worker's node URL and pid), ``join``
``room``, ``shout`` ``{"room", "seq", ...}`` (emits ``news`` with the same data to the room,
then acks ``True``). ``ECHO_PING_INTERVAL`` / ``ECHO_PING_TIMEOUT`` set the server's pings.
"""

from __future__ import annotations

import os
from typing import Any

import socketio

from siomesh import SioMesh

sio = socketio.AsyncServer(
    async_mode="asgi",
    ping_interval=float(os.environ.get("ECHO_PING_INTERVAL", "25")),
    ping_timeout=float(os.environ.get("ECHO_PING_TIMEOUT", "20")),
)


@sio.event  # type: ignore[untyped-decorator]
async def echo(sid: str, data: Any) -> Any:
    return data


@sio.event  # type: ignore[untyped-decorator]
async def whoami(sid: str) -> dict[str, Any]:
    return {"node": app.node.config.node_url, "pid": os.getpid()}


@sio.event  # type: ignore[untyped-decorator]
async def join(sid: str, room: str) -> bool:
    await sio.enter_room(sid, room)
    return True


@sio.event  # type: ignore[untyped-decorator]
async def shout(sid: str, data: dict[str, Any]) -> bool:
    await sio.emit("news", data, room=data["room"])
    return True


app = SioMesh(socketio.ASGIApp(sio))
