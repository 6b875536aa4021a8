"""The adapter's test app: python-socketio behind SioMesh, configured from ``SIOMESH_*``.

With ``ADAPTER_REDIS_URL`` set the server uses ``socketio.AsyncRedisManager`` instead (the mesh
must keep it). Client events (namespaces ``/`` and ``/chat``) drive server-side operations so
tests can trigger them on a chosen node:

* ``whoami`` -> ``{"node", "sid"}``; ``join``/``leave`` a room; ``set_data`` (session)
* ``emit`` ``{"event", "data", "to", "skip_sid", "bytes"}``: ``sio.emit`` from this node
* ``burst`` ``{"count", "tag"}``: ``count`` emits of ``seq`` ``[tag, i]`` to everybody
* ``bench`` ``{"count", "interval"}``: timestamped broadcasts for benchmarks/adapter_vs_redis.py
* ``call`` ``{"to", "data", "timeout"}``: ``sio.call("ping", ...)`` (ack from the client)
* ``room_op`` ``{"op": enter|leave|close|disconnect, "sid", "room"}``
* ``cluster`` ``{"op", ...}``: the MeshManager's cluster-wide calls, JSON-able results
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from typing import Any

import socketio

from siomesh import SioMesh
from siomesh.adapter import MeshManager, PartialResult

NODE = os.environ.get("SIOMESH_NODE_URL", "")
_REDIS = os.environ.get("ADAPTER_REDIS_URL")

sio = socketio.AsyncServer(
    async_mode="asgi",
    cors_allowed_origins="*",
    namespaces=["/", "/chat"],
    client_manager=socketio.AsyncRedisManager(_REDIS) if _REDIS else None,
)
app = SioMesh(socketio.ASGIApp(sio))


def _mgr() -> MeshManager:
    if not isinstance(sio.manager, MeshManager):
        raise RuntimeError(f"manager is {type(sio.manager).__name__}")
    return sio.manager


if app.adapter is not None:

    @app.adapter.on_server_event("hello")
    async def _hello(*args: Any) -> dict[str, Any]:
        return {"node": NODE, "args": list(args)}

    @app.adapter.on_server_event("hello", namespace="/chat")
    def _hello_chat(*args: Any) -> str:
        return NODE


def _data(payload: dict[str, Any]) -> Any:
    data = payload.get("data")
    if payload.get("bytes"):
        return base64.b64decode(data) if isinstance(data, str) else data
    return data


async def whoami(sid: str, namespace: str) -> dict[str, Any]:
    return {"node": NODE, "sid": sid, "manager": type(sio.manager).__name__}


async def join(sid: str, namespace: str, room: str) -> bool:
    await sio.enter_room(sid, room, namespace=namespace)
    return True


async def leave(sid: str, namespace: str, room: str) -> bool:
    await sio.leave_room(sid, room, namespace=namespace)
    return True


async def set_data(sid: str, namespace: str, data: Any) -> bool:
    await sio.save_session(sid, data, namespace=namespace)
    return True


async def emit(sid: str, namespace: str, payload: dict[str, Any]) -> bool:
    skip = payload.get("skip_sid")
    await sio.emit(
        payload.get("event", "msg"),
        _data(payload),
        to=payload.get("to"),
        skip_sid=sid if skip == "self" else skip,
        namespace=namespace,
    )
    return True


async def burst(sid: str, namespace: str, payload: dict[str, Any]) -> int:
    count = int(payload["count"])
    tag = payload["tag"]
    for i in range(count):
        await sio.emit("seq", [tag, i], namespace=namespace)
    return count


async def bench(sid: str, namespace: str, payload: dict[str, Any]) -> int:
    """``count`` broadcasts of ``b`` ``[monotonic send time, i]``, ``interval`` s apart."""
    count = int(payload["count"])
    interval = float(payload.get("interval", 0))
    for i in range(count):
        await sio.emit("b", [time.monotonic(), i], namespace=namespace)
        if interval:
            await asyncio.sleep(interval)
    return count


async def call(sid: str, namespace: str, payload: dict[str, Any]) -> Any:
    try:
        answer = await sio.call(
            "ping",
            _data(payload),
            to=payload["to"],
            namespace=namespace,
            timeout=float(payload.get("timeout", 5)),
        )
    except socketio.exceptions.TimeoutError:
        return {"error": "timeout"}
    if isinstance(answer, bytes):
        return {"bytes": base64.b64encode(answer).decode()}
    return {"answer": answer}


async def room_op(sid: str, namespace: str, payload: dict[str, Any]) -> bool:
    op = payload["op"]
    if op == "enter":
        await sio.enter_room(payload["sid"], payload["room"], namespace=namespace)
    elif op == "leave":
        await sio.leave_room(payload["sid"], payload["room"], namespace=namespace)
    elif op == "close":
        await sio.close_room(payload["room"], namespace=namespace)
    elif op == "disconnect":
        await sio.disconnect(payload["sid"], namespace=namespace)
    return True


async def cluster(sid: str, namespace: str, payload: dict[str, Any]) -> Any:
    mgr = _mgr()
    op = payload["op"]
    timeout = float(payload.get("timeout", 5))
    room = payload.get("room")
    try:
        if op == "server_side_emit":
            return {
                "responses": await mgr.server_side_emit(
                    payload.get("event", "hello"),
                    *payload.get("args", []),
                    namespace=namespace,
                    timeout=timeout,
                    with_ack=bool(payload.get("with_ack", True)),
                )
            }
        if op == "fetch_sockets":
            sockets = await mgr.fetch_sockets(namespace, room=room, timeout=timeout)
            return {"responses": [_socket(s) for s in sockets]}
        if op == "all_rooms":
            return {"responses": sorted(await mgr.all_rooms(namespace, timeout=timeout))}
        if op == "server_count":
            return {"responses": mgr.server_count()}
        if op == "sockets_join":
            await mgr.sockets_join(payload["rooms"], namespace, room=room)
        elif op == "sockets_leave":
            await mgr.sockets_leave(payload["rooms"], namespace, room=room)
        elif op == "disconnect_sockets":
            await mgr.disconnect_sockets(namespace, room=room, close=bool(payload.get("close")))
        elif op == "stats":
            return {"links": mgr.link_stats(), "queues": mgr.queue_sizes(), **mgr.stats}
        return {"responses": True}
    except PartialResult as exc:
        responses = exc.responses
        if op == "fetch_sockets":
            responses = [_socket(s) for s in responses]
        elif op == "all_rooms":
            responses = sorted(responses)
        return {"partial": True, "error": str(exc), "responses": responses, "missing": exc.missing}


def _socket(s: Any) -> dict[str, Any]:
    return {"sid": s.sid, "rooms": sorted(s.rooms), "data": s.data, "owner": s.owner}


def _bind(func: Any, namespace: str) -> Any:
    async def handler(sid: str, *args: Any) -> Any:
        return await func(sid, namespace, *args)

    return handler


for _ns in ("/", "/chat"):
    for _func in (whoami, join, leave, set_data, emit, burst, bench, call, room_op, cluster):
        sio.on(_func.__name__, _bind(_func, _ns), namespace=_ns)
