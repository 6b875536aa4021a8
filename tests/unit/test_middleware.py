"""The middleware driven in-process with raw ASGI messages (no sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount

from siomesh import ConfigError, DiscoveryError, SioMesh
from siomesh.sid import parse_sid

SECRET = "middleware-secret-0123456789"
NODE = "http://127.0.0.1:8001"
PEER = "http://127.0.0.1:8002"


def make(app: Any = None, **kw: Any) -> tuple[SioMesh, socketio.AsyncServer]:
    sio = socketio.AsyncServer(async_mode="asgi")
    inner = app(sio) if app else socketio.ASGIApp(sio)
    mesh = SioMesh(inner, node_url=NODE, peers=[NODE, PEER], secret=SECRET, env={}, **kw)
    return mesh, sio


async def call(
    mesh: SioMesh, method: str, path: str, query: bytes = b"", headers: Any = (), body: bytes = b""
) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": list(headers),
        "client": ("127.0.0.1", 5000),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
        "raw_path": path.encode(),
        "server": ("127.0.0.1", 8001),
        "asgi": {"version": "3.0"},
    }
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        # like uvicorn: nothing more until the client goes away, which it does not here
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await mesh(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), payload


async def test_handshake_sid_is_self_routing() -> None:
    mesh, _ = make()
    status, _, body = await call(mesh, "GET", "/socket.io/", b"EIO=4&transport=polling")
    assert status == 200
    sid = json.loads(body[1:])["sid"]
    parts = parse_sid(mesh.keys, sid)
    assert parts is not None and parts.node_tag == mesh.node_tag
    await mesh.shutdown()


async def test_unknown_sid_gets_engineio_400_without_hop() -> None:
    mesh, _ = make()
    status, _, body = await call(mesh, "GET", "/socket.io/", b"EIO=4&transport=polling&sid=bogus")
    assert status == 400
    assert b"Invalid session" in body
    assert mesh.stats["forwarded"] == 0 and mesh.stats["rejected"] == 1
    await mesh.shutdown()


async def test_unreachable_owner_gets_400_fast() -> None:
    # PEER (port 8002) has nothing listening: the connect fails at once.
    mesh, _ = make()
    peer_sid = mesh.make_sid()  # minted as ours; re-mint as the peer's
    from siomesh.sid import make_sid

    peer_sid = make_sid(mesh.keys, PEER, 1, b"\x00" * 12)
    t0 = time.monotonic()
    status, _, body = await call(
        mesh, "GET", "/socket.io/", f"EIO=4&transport=polling&sid={peer_sid}".encode()
    )
    assert status == 400 and b"Invalid session" in body
    assert time.monotonic() - t0 < 2
    assert mesh.stats["forward_errors"] == 1
    await mesh.shutdown()


async def test_oversized_forward_body_is_413() -> None:
    from siomesh.sid import make_sid

    mesh, _ = make(max_body_bytes=100)
    peer_sid = make_sid(mesh.keys, PEER, 1, b"\x01" * 12)
    status, _, body = await call(
        mesh,
        "POST",
        "/socket.io/",
        f"EIO=4&transport=polling&sid={peer_sid}".encode(),
        headers=[(b"content-length", b"500")],
        body=b"x" * 500,
    )
    assert status == 413 and b"100 bytes" in body
    await mesh.shutdown()


async def test_health_states() -> None:
    mesh, _ = make()
    await mesh.startup()
    status, _, body = await call(mesh, "GET", "/_siomesh/health")
    assert status == 200 and json.loads(body)["status"] == "serving"
    await mesh.drain()
    status, _, _ = await call(mesh, "GET", "/_siomesh/health")
    assert status == 503
    await mesh.shutdown()


async def test_custom_health_path() -> None:
    mesh, _ = make(health_path="/healthz")
    await mesh.startup()
    status, _, _ = await call(mesh, "GET", "/healthz")
    assert status == 200
    await mesh.shutdown()


async def test_peer_endpoint_requires_signature() -> None:
    mesh, _ = make()
    seen: list[tuple[bytes, str]] = []

    async def handler(body: bytes, sender: str) -> bytes:
        seen.append((body, sender))
        return b"pong"

    mesh.register_endpoint("ping", handler)
    status, _, _ = await call(mesh, "POST", "/_siomesh/ping", body=b"hi")
    assert status == 401
    forged = {
        "x-siomesh-node": PEER,
        "x-siomesh-time": str(int(time.time() * 1000)),
        "x-siomesh-signature": "00" * 32,
    }
    status, _, _ = await call(
        mesh,
        "POST",
        "/_siomesh/ping",
        headers=[(k.encode(), v.encode()) for k, v in forged.items()],
        body=b"hi",
    )
    assert status == 401
    good = mesh.signer.sign(
        method="POST", path="/_siomesh/ping", query="", node_url=PEER, now=time.time(), body=b"hi"
    )
    status, _, body = await call(
        mesh,
        "POST",
        "/_siomesh/ping",
        headers=[(k.encode(), v.encode()) for k, v in good.items()],
        body=b"hi",
    )
    assert (status, body) == (200, b"pong")
    assert seen == [(b"hi", PEER)]
    await mesh.shutdown()


async def test_forged_forward_claim_is_stripped() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["client"] = scope["client"]
        seen["headers"] = dict(scope["headers"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sio = socketio.AsyncServer(async_mode="asgi")
    mesh = SioMesh(app, server=sio, node_url=NODE, peers=[PEER], secret=SECRET, env={})
    forged = [
        (b"x-siomesh-node", PEER.encode()),
        (b"x-siomesh-client", b"6.6.6.6:1"),
        (b"x-siomesh-time", str(int(time.time() * 1000)).encode()),
        (b"x-siomesh-signature", b"ab" * 32),
    ]
    await call(mesh, "GET", "/socket.io/", b"EIO=4&transport=polling", headers=forged)
    assert seen["client"] == ("127.0.0.1", 5000)
    assert not any(k.startswith(b"x-siomesh") for k in seen["headers"])
    # a genuine signature from a member is trusted
    good = mesh.signer.sign(
        method="GET",
        path="/socket.io/",
        query="EIO=4&transport=polling",
        node_url=PEER,
        now=time.time(),
        client="10.9.8.7:4444",
    )
    await call(
        mesh,
        "GET",
        "/socket.io/",
        b"EIO=4&transport=polling",
        headers=[(k.encode(), v.encode()) for k, v in good.items()],
    )
    assert seen["client"] == ("10.9.8.7", 4444)
    await mesh.shutdown()


async def test_lifespan_passes_through_and_starts_mesh() -> None:
    events: list[str] = []
    sio = socketio.AsyncServer(async_mode="asgi")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        events.append("app-startup")
        yield
        events.append("app-shutdown")

    starlette_app = Starlette(routes=[Mount("/", socketio.ASGIApp(sio))], lifespan=lifespan)

    mesh = SioMesh(starlette_app, node_url=NODE, peers=[PEER], secret=SECRET, env={})
    started: list[str] = []
    mesh.on_startup(lambda: _append(started, "mesh-startup"))
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    out: list[str] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        out.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            assert mesh.state == "serving"

    await mesh({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert out == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == ["app-startup", "app-shutdown"] and started == ["mesh-startup"]
    assert mesh.state == "stopped"


async def _append(items: list[str], value: str) -> None:
    items.append(value)


def test_finds_server_in_fastapi_mount() -> None:
    sio = socketio.AsyncServer(async_mode="asgi")
    api = FastAPI()
    api.mount("/rt", socketio.ASGIApp(sio))
    mesh = SioMesh(api, node_url=NODE, peers=[PEER], secret=SECRET, env={})
    assert mesh.engine.sio is sio
    assert "/rt/socket.io/" in mesh.engine.prefixes


def test_finds_server_with_other_asgi_app() -> None:
    sio = socketio.AsyncServer(async_mode="asgi")
    api = FastAPI()
    mesh = SioMesh(
        socketio.ASGIApp(sio, other_asgi_app=api, socketio_path="ws"),
        node_url=NODE,
        peers=[PEER],
        secret=SECRET,
        env={},
    )
    assert mesh.engine.prefixes == ("/ws/",)


def test_no_server_is_a_clear_error() -> None:
    with pytest.raises(DiscoveryError, match="server=sio"):
        SioMesh(FastAPI(), node_url=NODE, peers=[PEER], secret=SECRET, env={})


def test_missing_secret_is_a_clear_error() -> None:
    sio = socketio.AsyncServer(async_mode="asgi")
    with pytest.raises(ConfigError, match="SIOMESH_SECRET"):
        SioMesh(socketio.ASGIApp(sio), node_url=NODE, env={})


async def test_metrics_endpoint() -> None:
    mesh, _ = make()
    await call(mesh, "GET", "/socket.io/", b"EIO=4&transport=polling&sid=bogus")
    status, headers, body = await call(mesh, "GET", "/_siomesh/metrics")
    assert status == 200
    assert headers[b"content-type"].startswith(b"text/plain")
    text = body.decode()
    assert "siomesh_rejected_requests_total 1.0" in text
    assert 'siomesh_members{state="alive"} 1.0' in text  # itself; seeds not yet answered
    await mesh.shutdown()


async def test_forwarded_long_poll_is_dropped_when_client_leaves() -> None:
    """A client that disconnects while its forwarded long-poll is held frees the upstream
    request at once (the owner here never answers: a listening socket that accepts nothing)."""
    import socket

    from siomesh.sid import make_sid

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    owner = f"http://127.0.0.1:{listener.getsockname()[1]}"
    sio = socketio.AsyncServer(async_mode="asgi")
    mesh = SioMesh(
        socketio.ASGIApp(sio), node_url=NODE, peers=[owner], secret=SECRET, env={}, gossip=False
    )
    sid = make_sid(mesh.keys, owner, 1, b"\x02" * 12)
    gone = asyncio.Event()
    inbox = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/socket.io/",
        "headers": [],
        "query_string": f"EIO=4&transport=polling&sid={sid}".encode(),
        "client": ("127.0.0.1", 5000),
    }
    task = asyncio.ensure_future(mesh(scope, receive, send))
    await asyncio.sleep(0.3)
    assert not task.done()  # held, as the owner holds it
    gone.set()
    await asyncio.wait_for(task, 2)
    assert sent == [] and mesh.stats["abandoned_polls"] == 1
    await mesh.shutdown()
    listener.close()
