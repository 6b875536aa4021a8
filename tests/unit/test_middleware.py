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
from siomesh.forward import FORWARDED_BY
from siomesh.sid import parse_sid

from .memlinks import MemoryNet

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


async def until(condition: Any, timeout: float = 2.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.002)

    await asyncio.wait_for(poll(), timeout)


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


async def mesh_request(mesh: SioMesh, method: str, path: str) -> tuple[int, bool]:
    """(status, whether the body was read) of a request with a 10-byte body."""
    read: list[bool] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        read.append(True)
        return {"type": "http.request", "body": b"x" * 10, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(b"content-length", b"10")],
    }
    await asyncio.wait_for(mesh(scope, receive, send), 2)
    status: int = sent[0]["status"]
    return status, bool(read)


async def test_unknown_mesh_endpoints_are_404_without_reading_the_body() -> None:
    mesh, _ = make()
    await mesh.startup()
    for method, path in (
        ("POST", "/_siomesh/ping"),
        ("POST", "/_siomesh/adapter"),
        ("POST", "/_siomesh/adapter-call"),
        ("POST", "/_siomesh/gossip"),
        ("POST", "/_siomesh/forward"),
        ("GET", "/_siomesh/link"),  # plain HTTP: only a WebSocket may become a link
        ("POST", "/_siomesh/status"),  # status and metrics: GET only
        ("PUT", "/_siomesh/metrics"),
        ("GET", "/_siomesh/"),
    ):
        assert await mesh_request(mesh, method, path) == (404, False), (method, path)
    assert (await mesh_request(mesh, "GET", "/_siomesh/status"))[0] == 200
    await mesh.shutdown()


async def websocket(mesh: SioMesh, path: str, headers: Any = ()) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": path,
        "query_string": b"",
        "headers": list(headers),
        "client": ("127.0.0.1", 5000),
    }
    await asyncio.wait_for(mesh(scope, receive, send), 2)
    return sent


async def test_mesh_websockets_other_than_the_link_are_refused() -> None:
    mesh, _ = make()
    assert await websocket(mesh, "/_siomesh/gossip") == [{"type": "websocket.close", "code": 1008}]
    assert mesh.stats["links_refused"] == 0
    await mesh.shutdown()


async def test_link_without_a_valid_offer_is_refused_before_accepting() -> None:
    mesh, _ = make()
    forged = [
        (b"x-siomesh-node", PEER.encode()),
        (b"x-siomesh-to", NODE.encode()),
        (b"x-siomesh-link", b"data"),
        (b"x-siomesh-generation", b"1"),
        (b"x-siomesh-nonce", b"00" * 16),
        (b"x-siomesh-time", str(int(time.time() * 1000)).encode()),
        (b"x-siomesh-signature", b"ab" * 32),
    ]
    for headers in ([], forged):
        sent = await websocket(mesh, "/_siomesh/link", headers)
        assert sent == [{"type": "websocket.close", "code": 1008}]
    assert mesh.stats["links_refused"] == 2 and mesh.stats["links_accepted"] == 0
    await mesh.shutdown()


async def test_client_mesh_headers_are_stripped() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["client"] = scope["client"]
        seen["headers"] = list(scope["headers"])
        seen["forwarded_by"] = scope.get(FORWARDED_BY)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sio = socketio.AsyncServer(async_mode="asgi")
    mesh = SioMesh(app, server=sio, node_url=NODE, peers=[PEER], secret=SECRET, env={})
    forged = [
        (b"host", b"public.example"),
        (b"x-siomesh-node", PEER.encode()),
        (b"x-siomesh-client", b"6.6.6.6:1"),
        (b"x-siomesh-time", str(int(time.time() * 1000)).encode()),
        (b"x-siomesh-signature", b"ab" * 32),
        (b"x-forwarded-for", b"9.9.9.9"),
    ]
    await call(mesh, "GET", "/socket.io/", b"EIO=4&transport=polling", headers=forged)
    # nothing a client sends makes it a peer: its address and claims are what they were
    assert seen["client"] == ("127.0.0.1", 5000)
    assert seen["forwarded_by"] is None
    assert seen["headers"] == [(b"host", b"public.example"), (b"x-forwarded-for", b"9.9.9.9")]
    # a request without mesh headers reaches the app untouched
    await call(mesh, "GET", "/socket.io/", b"EIO=4&transport=polling", headers=forged[:1])
    assert seen["headers"] == forged[:1]
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
    assert "siomesh_rejected_total 1.0" in text
    assert 'siomesh_members{state="alive"} 1.0' in text  # itself; seeds not yet answered
    await mesh.shutdown()


class Owner:
    """Two meshes on an in-memory network: requests to ``forwarder`` for sessions of ``owner``
    travel over a real peer link."""

    def __init__(self, **forwarder_options: Any) -> None:
        self.net = MemoryNet()
        self.forwarder, self.forwarder_sio = make(**forwarder_options)
        self.sio = sio = socketio.AsyncServer(async_mode="asgi")
        self.owner = SioMesh(
            socketio.ASGIApp(sio), node_url=PEER, peers=[NODE, PEER], secret=SECRET, env={}
        )
        self.net.attach(self.forwarder)
        self.net.attach(self.owner)

    async def __aenter__(self) -> Owner:
        await self.forwarder.startup()
        await self.owner.startup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.net.aclose()

    async def session(self) -> str:
        status, _, body = await call(self.owner, "GET", "/socket.io/", b"EIO=4&transport=polling")
        assert status == 200
        sid: str = json.loads(body[1:])["sid"]
        return sid


async def test_polling_is_forwarded_to_the_owner_over_a_link() -> None:
    async with Owner() as o:
        sid = await o.session()
        query = f"EIO=4&transport=polling&sid={sid}".encode()
        status, _, body = await asyncio.wait_for(
            call(o.forwarder, "POST", "/socket.io/", query, body=b"40"), 2
        )
        assert (status, body) == (200, b"OK")
        status, headers, body = await asyncio.wait_for(
            call(o.forwarder, "GET", "/socket.io/", query), 2
        )
        assert status == 200 and body.startswith(b"40{")
        assert headers[b"content-length"] == str(len(body)).encode()
        assert o.forwarder.stats["forwarded"] == 2 and o.owner.stats["forwarded_in"] == 2
        assert o.forwarder.links.current(PEER, "data") is not None


async def test_forwarded_long_poll_is_dropped_when_client_leaves() -> None:
    """A client that disconnects while its forwarded long-poll is held frees the owner's poll
    at once, and that poll takes no packets: the client's next poll gets them."""
    async with Owner() as o:
        sid = await o.session()
        query = f"EIO=4&transport=polling&sid={sid}".encode()
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
            "query_string": query,
            "client": ("127.0.0.1", 5000),
        }
        task = asyncio.ensure_future(o.forwarder(scope, receive, send))
        await until(lambda: o.owner.stats["forwarded_in"] == 1)
        await asyncio.sleep(0.05)
        assert not task.done()  # held, as the owner holds it
        gone.set()
        await asyncio.wait_for(task, 2)
        assert sent == [] and o.forwarder.stats["abandoned_polls"] == 1
        assert o.forwarder.stats["forward_cancelled"] == 1
        # the owner's orphaned poll returned without closing the session
        link = o.forwarder.links.current(PEER, "data")
        assert link is not None
        await until(lambda: all(i["streams"] == 0 for i in o.owner.links.peer_links()))
        assert sid in o.owner.local_sids
        # a packet queued now goes to the client's next poll, not to the orphan
        status, _, body = await call(
            o.owner, "POST", "/socket.io/", query, [(b"content-length", b"2")], b"40"
        )
        assert (status, body) == (200, b"OK")
        status, _, body = await asyncio.wait_for(call(o.owner, "GET", "/socket.io/", query), 2)
        assert status == 200 and body.startswith(b"40{")
        assert o.owner.stats["forward_answers_lost"] == 0


async def test_owner_going_away_mid_poll_is_a_400() -> None:
    async with Owner() as o:
        sid = await o.session()
        query = f"EIO=4&transport=polling&sid={sid}".encode()
        task = asyncio.ensure_future(call(o.forwarder, "GET", "/socket.io/", query))
        await until(lambda: o.owner.stats["forwarded_in"] == 1)
        link = o.forwarder.links.current(PEER, "data")
        assert link is not None
        await link.shutdown(reason="owner crashed")
        status, _, body = await asyncio.wait_for(task, 2)
        # sent, never answered: python-engineio's own 400, so the client reconnects
        assert status == 400 and b"Invalid session" in body
        assert o.forwarder.stats["forward_lost"] == 1
        assert o.forwarder.stats["forward_errors"] == 1


async def test_websocket_upgrade_is_relayed_to_the_owner_over_a_link() -> None:
    """With takeover disabled (or when it cannot happen: tests/unit/test_takeover.py), an
    upgrade that lands on another node is relayed to the owner for the socket's life."""
    async with Owner(takeover={"enabled": False}) as o:
        sid = await o.session()
        to_server: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        to_client: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        scope = {
            "type": "websocket",
            "path": "/socket.io/",
            "query_string": f"EIO=4&transport=websocket&sid={sid}".encode(),
            "headers": [(b"host", b"public.example"), (b"sec-websocket-key", b"k")],
            "client": ("10.1.2.3", 5000),
            "subprotocols": [],
        }
        task = asyncio.ensure_future(o.forwarder(scope, to_server.get, to_client.put))

        async def expect(kind: str) -> dict[str, Any]:
            message = await asyncio.wait_for(to_client.get(), 2)
            assert message["type"] == kind, message
            return message

        await to_server.put({"type": "websocket.connect"})
        await expect("websocket.accept")
        await to_server.put({"type": "websocket.receive", "text": "2probe"})
        assert (await expect("websocket.send"))["text"] == "3probe"
        await to_server.put({"type": "websocket.receive", "text": "5"})  # upgrade done
        await to_server.put({"type": "websocket.receive", "text": "40"})  # socket.io connect
        text = (await expect("websocket.send"))["text"]
        while text == "6":  # the NOOP that python-engineio sends on an upgrade
            text = (await expect("websocket.send"))["text"]
        assert text.startswith("40{")
        assert o.forwarder.stats["relayed_websockets"] == 1
        assert o.owner.stats["relayed_in"] == 1
        await to_server.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(task, 2)
        assert o.forwarder.stats["relayed_websockets"] == 0
        assert o.forwarder.stats["forwarded"] == 1
        await until(lambda: sid not in o.owner.local_sids)  # the client's close reached it


async def test_websocket_for_a_dead_owner_is_refused_before_accepting() -> None:
    async with Owner() as o:
        sid = await o.session()
        o.net.down.add(PEER)
        sent: list[dict[str, Any]] = []
        inbox = [{"type": "websocket.connect"}]

        async def receive() -> dict[str, Any]:
            return inbox.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "websocket",
            "path": "/socket.io/",
            "query_string": f"EIO=4&transport=websocket&sid={sid}".encode(),
            "headers": [],
            "client": ("10.1.2.3", 5000),
        }
        await asyncio.wait_for(o.forwarder(scope, receive, send), 2)
        assert sent == [{"type": "websocket.close", "code": 1008}]
        assert o.forwarder.stats["forward_errors"] == 1
