"""FastAPI with python-socketio mounted at ``/socket.io``, wrapped in SioMesh.

    siomesh run fastapi_app:app --workers 3 --port 8000        # from the examples directory

SioMesh finds the Socket.IO server inside the FastAPI app by itself (pass ``server=sio`` when
your app is shaped so that it cannot). HTTP routes are passed through untouched; only Engine.IO
requests are routed, so a session's requests reach its owner whichever worker gets them.
"""

from __future__ import annotations

import os
from typing import Any

import socketio
from fastapi import FastAPI

from siomesh import SioMesh

sio = socketio.AsyncServer(async_mode="asgi")
api = FastAPI(title="siomesh + FastAPI")

# Starlette keeps the full path in a mounted app's scope, so the Engine.IO server, whose path is
# "socket.io" by default, answers at /socket.io/ as clients expect.
api.mount("/socket.io", socketio.ASGIApp(sio))


@api.get("/api/node")
async def node() -> dict[str, Any]:
    """Which worker answered (any of them may: HTTP routes need no stickiness)."""
    return {"node": os.environ.get("SIOMESH_NODE_URL"), "sessions": len(sio.eio.sockets)}


@sio.event
async def echo(sid: str, data: Any) -> Any:
    return data


@sio.event
async def whoami(sid: str) -> str | None:
    return os.environ.get("SIOMESH_NODE_URL")


@sio.event
async def shout(sid: str, text: str) -> None:
    # Reaches every client of every worker through the mesh adapter.
    await sio.emit("shout", {"from": sid, "text": text})


app = SioMesh(api)
