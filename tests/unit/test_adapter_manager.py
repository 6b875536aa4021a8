"""PeerLink (ordering, batching, retries, drops) and MeshManager (installation, routing,
cross-node emits, acks and calls) in-process: two meshes wired to each other without sockets."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import socketio

from siomesh import SioMesh
from siomesh.adapter import LinkSettings, MeshManager, PartialResult, install_adapter
from siomesh.adapter.links import PeerLink
from siomesh.adapter.wire import DedupWindow, decode_batch
from siomesh.runtime.peers import PeerError
from siomesh.sid import make_sid

SECRET = "adapter-unit-secret-0123456789"
A = "http://127.0.0.1:9101"
B = "http://127.0.0.1:9102"
C = "http://127.0.0.1:9103"


# -- PeerLink --------------------------------------------------------------------------------


class Receiver:
    """A peer that records what it delivered, deduplicating like the real endpoint."""

    def __init__(self, fail_after_delivery: int = 0, fail_before: int = 0) -> None:
        self.dedup = DedupWindow()
        self.delivered: list[str] = []
        self.batches: list[int] = []
        self.fail_after_delivery = fail_after_delivery
        self.fail_before = fail_before

    async def send(self, peer: str, body: bytes) -> bytes:
        if self.fail_before:
            self.fail_before -= 1
            raise PeerError("connection refused")
        batch = decode_batch(body)
        self.batches.append(len(batch.messages))
        for seq, msg in batch.messages:
            if self.dedup.accept(peer, batch.epoch, seq):
                self.delivered.append(msg["m"])
        if self.fail_after_delivery:
            # the peer applied the batch but the answer was lost: the sender retries
            self.fail_after_delivery -= 1
            raise PeerError("timeout")
        return b"ok"


def link(
    receiver: Receiver, alive: bool = True, **settings: Any
) -> tuple[PeerLink, dict[str, bool]]:
    state = {"alive": alive}
    defaults: dict[str, Any] = {"backoff": 0.001, "max_backoff": 0.002}
    defaults.update(settings)
    return (
        PeerLink(
            B,
            epoch=1,
            send=receiver.send,
            is_alive=lambda url: state["alive"],
            settings=LinkSettings(**defaults),
        ),
        state,
    )


async def drain(peer_link: PeerLink, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(peer_link) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


async def test_link_sends_in_order_in_batches() -> None:
    rx = Receiver()
    ln, _ = link(rx, max_batch=100)
    for i in range(1000):
        ln.enqueue(json.dumps({"m": str(i)}))
    ln.start()
    await drain(ln)
    await ln.stop(0)
    assert rx.delivered == [str(i) for i in range(1000)]
    assert max(rx.batches) == 100 and len(rx.batches) == 10
    assert ln.stats["sent"] == 1000


async def test_link_batches_respect_the_byte_budget() -> None:
    rx = Receiver()
    ln, _ = link(rx, max_batch_bytes=1000)
    ln.start()
    for i in range(20):
        ln.enqueue(json.dumps({"m": str(i), "pad": "x" * 300}))
    await drain(ln)
    await ln.stop(0)
    assert len(rx.delivered) == 20 and max(rx.batches) <= 3


async def test_a_retry_after_a_lost_answer_never_delivers_twice() -> None:
    rx = Receiver(fail_after_delivery=3)
    ln, _ = link(rx, max_batch=7)
    for i in range(50):
        ln.enqueue(json.dumps({"m": str(i)}))
    ln.start()
    await drain(ln)
    await ln.stop(0)
    assert rx.delivered == [str(i) for i in range(50)]
    assert ln.stats["retries"] == 3 and ln.stats["dropped"] == 0


async def test_transient_failures_are_retried() -> None:
    rx = Receiver(fail_before=2)
    ln, _ = link(rx, retries=3)
    ln.enqueue(json.dumps({"m": "x"}))
    ln.start()
    await drain(ln)
    await ln.stop(0)
    assert rx.delivered == ["x"] and ln.stats["retries"] == 2


async def test_exhausted_retries_drop_the_batch_then_single_attempts() -> None:
    rx = Receiver(fail_before=4)
    ln, _ = link(rx, retries=3, max_batch=1)
    ln.enqueue(json.dumps({"m": "lost"}))
    ln.enqueue(json.dumps({"m": "lost-too"}))  # failing: a single attempt
    ln.enqueue(json.dumps({"m": "kept"}))
    ln.start()
    await drain(ln)
    await ln.stop(0)
    assert rx.delivered == ["kept"]
    assert ln.stats["dropped"] == 2


async def test_a_4xx_answer_is_not_retried() -> None:
    calls = 0

    async def refuse(peer: str, body: bytes) -> bytes:
        nonlocal calls
        calls += 1
        raise PeerError("HTTP 400", 400)

    ln = PeerLink(B, epoch=1, send=refuse, is_alive=lambda u: True, settings=LinkSettings())
    ln.enqueue("{}")
    ln.start()
    await drain(ln)
    await ln.stop(0)
    assert calls == 1 and ln.stats["dropped"] == 1


async def test_dead_peer_queue_is_dropped_and_full_queue_refuses_without_blocking() -> None:
    rx = Receiver()
    ln, state = link(rx, max_queue=10)
    state["alive"] = False
    accepted = [ln.enqueue(json.dumps({"m": str(i)})) for i in range(15)]
    assert accepted == [True] * 10 + [False] * 5
    assert ln.stats["refused"] == 5
    ln.start()
    await drain(ln)
    await ln.stop(0)
    assert rx.delivered == [] and ln.stats["dropped"] == 10


async def test_stop_flushes_then_drops() -> None:
    gate = asyncio.Event()

    async def blocked(peer: str, body: bytes) -> bytes:
        await gate.wait()
        return b"ok"

    ln = PeerLink(B, epoch=1, send=blocked, is_alive=lambda u: True, settings=LinkSettings())
    ln.start()
    for _ in range(5):
        ln.enqueue("{}")
    assert await ln.stop(0.05) == 5
    assert not ln.running


# -- MeshManager -----------------------------------------------------------------------------


def node(url: str, **kw: Any) -> tuple[SioMesh, socketio.AsyncServer]:
    sio = socketio.AsyncServer(async_mode="asgi", **kw)
    mesh = SioMesh(socketio.ASGIApp(sio), node_url=url, peers=[A, B], secret=SECRET, env={})
    return mesh, sio


def adapter(mesh: SioMesh) -> MeshManager:
    assert mesh.adapter is not None
    return mesh.adapter


def test_installed_on_the_default_manager_only() -> None:
    mesh, sio = node(A)
    assert isinstance(sio.manager, MeshManager) and sio.manager is mesh.adapter
    assert sio.manager.server is sio
    assert {"adapter", "adapter-call"} <= set(mesh._endpoints)
    assert install_adapter(mesh) is None  # already a MeshManager: not the default type

    redis = socketio.AsyncRedisManager("redis://127.0.0.1:1/0")
    mesh2, sio2 = node(A, client_manager=redis)
    assert mesh2.adapter is None and sio2.manager is redis

    sio3 = socketio.AsyncServer(async_mode="asgi")
    plain = sio3.manager
    mesh3 = SioMesh(
        socketio.ASGIApp(sio3), node_url=A, peers=[B], secret=SECRET, env={}, adapter=False
    )
    assert mesh3.adapter is None and sio3.manager is plain


def test_routing_by_sid_tag_room_directory_and_broadcast() -> None:
    mesh, _ = node(A)
    mgr = adapter(mesh)
    sid_b = make_sid(mesh.keys, B, 1, b"\x01" * 12)
    sid_a = make_sid(mesh.keys, A, 1, b"\x02" * 12)
    sid_unknown = make_sid(mesh.keys, C, 1, b"\x03" * 12)
    assert mgr.sid_owner(sid_b) == B and mgr.sid_owner(sid_a) == A
    assert mgr.sid_owner(sid_unknown) == "" and mgr.sid_owner("room") is None
    assert mgr._peers_for("/", None) == [B]
    assert mgr._peers_for("/", sid_b) == [B]
    assert mgr._peers_for("/", sid_a) == []
    assert mgr._peers_for("/", sid_unknown) == []
    assert mgr._peers_for("/", "room") == [B]  # no room directory: every live peer

    mesh.cluster.room_owners = lambda ns, room: set() if room == "empty" else None  # type: ignore[attr-defined]
    assert mgr._peers_for("/", "empty") == []
    assert mgr._peers_for("/", ["empty", sid_b]) == [B]
    assert mgr._peers_for("/", ["empty", "unknown"]) == [B]


async def connected(sio: socketio.AsyncServer, eio_sid: str, namespace: str = "/") -> str:
    sid: str = await sio.manager.connect(eio_sid, namespace)
    return sid


class Pair:
    """Meshes A and B whose adapters talk through direct calls instead of HTTP."""

    def __init__(self) -> None:
        self.a, self.sio_a = node(A)
        self.b, self.sio_b = node(B)
        self.sent: dict[str, list[tuple[str, Any]]] = {A: [], B: []}
        for mesh, sio, url in ((self.a, self.sio_a, A), (self.b, self.sio_b, B)):
            self._wire(mesh, url)
            self._record(sio, url)

    def _wire(self, mesh: SioMesh, url: str) -> None:
        async def post(peer: str, endpoint: str, body: bytes, *, timeout: float) -> bytes:
            target = adapter(self.b if peer == B else self.a)
            if endpoint == "adapter":
                return await target.handle_batch(body, url)
            return await target.handle_call(body, url)

        mesh.peers.post = post  # type: ignore[method-assign,assignment]

    def _record(self, sio: socketio.AsyncServer, url: str) -> None:
        async def send_eio(eio_sid: str, pkt: Any) -> None:
            self.sent[url].append((eio_sid, pkt.data))

        async def send_pkt(eio_sid: str, pkt: Any) -> None:
            self.sent[url].append((eio_sid, pkt.encode()))

        sio._send_eio_packet = send_eio
        sio._send_packet = send_pkt

    async def __aenter__(self) -> Pair:
        await self.a.startup()
        await self.b.startup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.a.shutdown()
        await self.b.shutdown()

    async def settle(self) -> None:
        for _ in range(200):
            if not any(adapter(m).queue_sizes().get(p) for m, p in ((self.a, B), (self.b, A))):
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.01)


async def test_emits_reach_the_other_node_with_skip_and_rooms() -> None:
    async with Pair() as p:
        b1 = await connected(p.sio_b, "eioB1")
        b2 = await connected(p.sio_b, "eioB2")
        await p.sio_b.enter_room(b2, "blue")
        await p.sio_a.emit("all", 1)
        await p.sio_a.emit("skip", 2, skip_sid=[b1])
        await p.sio_a.emit("room", 3, to="blue")
        await p.sio_a.emit("direct", b"\x00bin", to=b1)
        await p.settle()
        got = [(e, str(d)) for e, d in p.sent[B]]
        assert ("eioB1", '2["all",1]') in got and ("eioB2", '2["all",1]') in got
        assert [e for e, d in got if "skip" in d] == ["eioB2"]
        assert [e for e, d in got if "room" in d] == ["eioB2"]
        assert [e for e, d in got if "direct" in d] == ["eioB1"]  # binary: placeholder + att.
        assert p.sent[A] == []


async def test_ack_returns_to_the_calling_node() -> None:
    async with Pair() as p:
        b1 = await connected(p.sio_b, "eioB1")
        answers: list[tuple[Any, ...]] = []
        await p.sio_a.emit("ask", "q", to=b1, callback=lambda *a: answers.append(a))
        await p.settle()
        (eio_sid, encoded) = p.sent[B][-1]
        assert eio_sid == "eioB1" and encoded.startswith('21["ask"')  # ack id 1
        await adapter(p.b).trigger_callback(b1, 1, ["ok", b"\x01"])  # the client acks on B
        await p.settle()
        assert answers == [("ok", b"\x01")]


async def test_remote_room_changes_and_disconnect() -> None:
    async with Pair() as p:
        b1 = await connected(p.sio_b, "eioB1")
        await p.sio_a.enter_room(b1, "x")
        await p.settle()
        assert "x" in p.sio_b.manager.get_rooms(b1, "/")
        await p.sio_a.leave_room(b1, "x")
        await p.settle()
        assert "x" not in p.sio_b.manager.get_rooms(b1, "/")
        await p.sio_a.disconnect(b1)
        await p.settle()
        assert not p.sio_b.manager.is_connected(b1, "/")


async def test_cluster_calls() -> None:
    async with Pair() as p:
        b1 = await connected(p.sio_b, "eioB1")
        a1 = await connected(p.sio_a, "eioA1")
        adapter(p.b).on_server_event("hello", lambda *args: ["B", *args])
        assert await adapter(p.a).server_side_emit("hello", 1, with_ack=True) == [["B", 1]]
        assert await adapter(p.a).server_side_emit("nobody", with_ack=True) == []
        sockets = await adapter(p.a).fetch_sockets()
        assert {(s.sid, s.owner) for s in sockets} == {(a1, A), (b1, B)}
        await adapter(p.a).sockets_join("club")
        await p.settle()
        assert await adapter(p.a).all_rooms() == {"club"}
        await adapter(p.a).sockets_leave(["club"])
        await p.settle()
        assert await adapter(p.a).all_rooms() == set()
        assert adapter(p.a).server_count() == 2


async def test_cluster_call_to_a_silent_peer_is_partial() -> None:
    mesh, _ = node(A)

    async def hang(peer: str, endpoint: str, body: bytes, *, timeout: float) -> bytes:
        await asyncio.sleep(10)
        return b""

    mesh.peers.post = hang  # type: ignore[method-assign,assignment]
    started = time.monotonic()
    with pytest.raises(PartialResult) as info:
        await adapter(mesh).server_side_emit("x", with_ack=True, timeout=0.1)
    assert time.monotonic() - started < 1
    assert str(info.value) == "timeout reached: missing 1 responses"
    assert info.value.responses == [] and info.value.missing == [B]
    assert isinstance(info.value, TimeoutError)


async def test_bad_batches_are_400_and_unsigned_401() -> None:
    mesh, _ = node(A)
    body = b"garbage"

    async def post(headers: dict[str, str]) -> int:
        sent: list[dict[str, Any]] = []
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/_siomesh/adapter",
            "query_string": b"",
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()]
            + [(b"content-length", str(len(body)).encode())],
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await mesh(scope, receive, send)
        status: int = sent[0]["status"]
        return status

    assert await post({}) == 401
    signed = mesh.signer.sign(
        method="POST", path="/_siomesh/adapter", query="", node_url=B, now=time.time(), body=body
    )
    assert await post(signed) == 400
    await mesh.shutdown()
