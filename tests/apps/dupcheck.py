"""The security tests' app: python-socketio behind SioMesh (configured from ``SIOMESH_*``), with
an ASGI probe between the two that lets a test see what the app itself was given.

* Events of :func:`~siomesh.benchkit.apps.events.register` (``echo``, ``whoami``, ...), plus
  ``msg`` ``{"c": client id, "n": number}``: counts how many times this app ran the handler for
  ``(c, n)``; a second run is a duplicate (the client gets a ``dup`` event) and acks
  ``{"node", "n", "count"}``.
* ``GET /_probe/seen``: ``{"node", "handled", "keys", "duplicates", "all"}``; the last two
  list ``[c, n, count]`` (``duplicates``: only those handled more than once).
* ``GET /_probe/requests``: every request (HTTP or WebSocket) that reached the app carrying an
  ``x-probe-mark`` header: its mark, type, method, client address, the peer that forwarded it
  over a link (``siomesh.forwarded_by``), its ``x-forwarded-for`` and the names of any
  ``x-siomesh-*`` headers left in it (there must be none).

Logging goes to stderr with level names (``WARNING siomesh.links: ...``), so tests can read
the level of what the mesh logged. Knobs: ``ECHO_PING_INTERVAL``, ``ECHO_PING_TIMEOUT`` (s),
``ECHO_CORS_ORIGINS`` (comma separated, default ``*``).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from siomesh import SioMesh
from siomesh.benchkit.apps.events import register

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

NODE = os.environ.get("SIOMESH_NODE_URL", "")
MARK = b"x-probe-mark"


def _cors() -> str | list[str]:
    raw = os.environ.get("ECHO_CORS_ORIGINS", "*")
    return "*" if raw == "*" else [o.strip() for o in raw.split(",") if o.strip()]


sio = socketio.AsyncServer(
    async_mode="asgi",
    cors_allowed_origins=_cors(),
    ping_interval=float(os.environ.get("ECHO_PING_INTERVAL", "25")),
    ping_timeout=float(os.environ.get("ECHO_PING_TIMEOUT", "20")),
)
register(sio, NODE)

#: how many times the ``msg`` handler ran for each (client id, number)
seen: Counter[tuple[str, int]] = Counter()
#: marked requests, newest last (bounded)
requests: deque[dict[str, Any]] = deque(maxlen=10_000)


@sio.event  # type: ignore[untyped-decorator]
async def msg(sid: str, data: dict[str, Any]) -> dict[str, Any]:
    key = (str(data["c"]), int(data["n"]))
    seen[key] += 1
    count = seen[key]
    if count > 1:
        await sio.emit("dup", [key[0], key[1], count], to=sid)
    return {"node": NODE, "n": key[1], "count": count}


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _json(send: Send, value: Any) -> None:
    body = json.dumps(value).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Probe:
    """ASGI middleware between SioMesh and the Socket.IO app (see the module docstring).
    ``app`` is the attribute SioMesh's discovery walks to find the server."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/_probe/seen":
            await _json(
                send,
                {
                    "node": NODE,
                    "handled": sum(seen.values()),
                    "keys": len(seen),
                    "duplicates": [[c, n, k] for (c, n), k in seen.items() if k > 1],
                    "all": [[c, n, k] for (c, n), k in seen.items()],
                },
            )
            return
        if scope["type"] == "http" and scope["path"] == "/_probe/requests":
            await _json(send, {"node": NODE, "requests": list(requests)})
            return
        if scope["type"] in ("http", "websocket"):
            headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
            mark = next((v for k, v in headers if k == MARK), None)
            if mark is not None:
                client = scope.get("client")
                requests.append(
                    {
                        "mark": mark.decode("latin-1"),
                        "type": scope["type"],
                        "method": scope.get("method", "GET"),
                        "query": scope.get("query_string", b"").decode("latin-1"),
                        "client": list(client) if client else None,
                        "forwarded_by": scope.get("siomesh.forwarded_by"),
                        "x-forwarded-for": next(
                            (v.decode("latin-1") for k, v in headers if k == b"x-forwarded-for"),
                            None,
                        ),
                        "mesh_headers": sorted(
                            k.decode("latin-1") for k, _ in headers if k.startswith(b"x-siomesh-")
                        ),
                    }
                )
        await self.app(scope, receive, send)


app = SioMesh(Probe(socketio.ASGIApp(sio)))
