"""The chat app behind ``siomesh demo``: Starlette + python-socketio, wrapped in SioMesh.

Each worker of ``siomesh demo`` imports this module with its ``SIOMESH_*`` environment set by
the supervisor (node URL, peers, secret), so nothing here is configured by hand. The debug
headers (``x-siomesh-served-by`` / ``x-siomesh-via``) are always on: showing which worker served
each request is the point of the page.

Socket.IO events (namespace ``/``):

* ``join`` (name): remember the sender's display name; acks the node URL of its owner.
* ``chat`` (text): broadcast ``{"name", "text", "node", "sid"}`` to everyone, where ``node`` is
  the worker that handled the message; acks ``True``.
* ``whoami``: acks the URL of the worker that owns the session.
* ``journey``: acks how the session reached its owner (:meth:`SioMesh.journey
  <siomesh.node.MeshNode.journey>`): where the handshake was served, which workers forwarded
  its polls, where its WebSocket landed and whether it was taken over or relayed (and why).

The broadcast is a plain ``sio.emit``: SioMesh's cluster adapter relays it to the other workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import socketio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from siomesh import SioMesh
from siomesh.config import env_list, env_option

__all__ = ["MAX_NAME", "MAX_TEXT", "app", "sio", "web"]

STATIC_DIR = Path(__file__).parent / "static"
NODE = env_option("node_url") or ""
#: Longest display name and message kept; longer input is cut, not refused.
MAX_NAME = 40
MAX_TEXT = 2000

sio = socketio.AsyncServer(async_mode="asgi")


def _clean(value: Any, limit: int) -> str:
    return value.strip()[:limit] if isinstance(value, str) else ""


async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    await sio.save_session(sid, {"name": f"guest-{sid[-4:]}"})


async def join(sid: str, name: Any = None) -> str:
    cleaned = _clean(name, MAX_NAME)
    if cleaned:
        await sio.save_session(sid, {"name": cleaned})
    return NODE


async def chat(sid: str, text: Any = None) -> bool:
    body = _clean(text, MAX_TEXT)
    if not body:
        return False
    session = await sio.get_session(sid)
    message = {"name": session.get("name", "guest"), "text": body, "node": NODE, "sid": sid}
    await sio.emit("chat", message)
    return True


async def whoami(sid: str) -> str:
    return NODE


async def journey(sid: str) -> dict[str, Any] | None:
    eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
    return app.journey(eio_sid) if eio_sid is not None else None


# Registered without the @sio.event decorator, which is untyped and would hide these
# signatures from mypy.
for _handler in (connect, join, chat, whoami, journey):
    sio.on(_handler.__name__, handler=_handler)


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-store"})


async def cluster(request: Request) -> Response:
    """The workers in index order (the page names them "worker 0", "worker 1", ...) and the
    one that answered this request."""
    peers = list(env_list("peers"))
    return JSONResponse({"nodes": peers or [NODE], "self": NODE})


web = Starlette(
    routes=[
        Route("/", index),
        Route("/cluster", cluster),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
)

app = SioMesh(socketio.ASGIApp(sio, other_asgi_app=web), served_by_header=True)
