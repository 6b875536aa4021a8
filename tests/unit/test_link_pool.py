"""LinkPool (siomesh.links.pool) between meshes in memory: the real handshake through the real
middleware endpoint, reuse, queued posts, refusals."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import aiohttp
import pytest
import socketio

from siomesh import SioMesh
from siomesh.links.frames import FrameType
from siomesh.links.handshake import HEADER_TO, LinkSecret, Offer
from siomesh.links.pool import LinkUnavailable

from .memlinks import MemoryNet

SECRET = "pool-unit-secret-0123456789"
A = "http://127.0.0.1:9301"
B = "http://127.0.0.1:9302"
C = "http://127.0.0.1:9303"
T = 2.0


def node(url: str, secret: str = SECRET) -> SioMesh:
    sio = socketio.AsyncServer(async_mode="asgi")
    return SioMesh(
        socketio.ASGIApp(sio),
        node_url=url,
        peers=[A, B, C],
        secret=secret,
        env={},
        gossip=False,
        adapter=False,
    )


@pytest.fixture
async def net() -> Any:
    network = MemoryNet()
    yield network
    await network.aclose()


async def until(condition: Any, timeout: float = T) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.002)

    await asyncio.wait_for(poll(), timeout)


async def test_dial_handshake_and_reuse(net: MemoryNet) -> None:
    a, b = net.attach(node(A)), net.attach(node(B))
    up: list[Any] = []
    a.links.on_link_up(up.append)
    link = await asyncio.wait_for(a.links.get(B, "data"), T)
    assert link.is_open and link.dialler and link.peer == B and link.kind == "data"
    assert link.peer_generation == b.generation
    assert up == [link]
    assert await a.links.get(B, "data") is link  # reused, not dialled again
    assert a.links.current(B, "data") is link and a.links.current(B, "control") is None
    assert a.stats["links_dialled"] == 1 and b.stats["links_accepted"] == 1
    assert len(net.offers) == 1 and net.offers[0][HEADER_TO] == B
    assert b.links.peer_links() == [
        {"peer": A, "kind": "data", "dialled": False, "streams": 0, "buffered": 0}
    ]
    assert a.links.open_links() == 1 and b.links.open_links() == 1


async def test_concurrent_gets_share_one_dial(net: MemoryNet) -> None:
    a, _ = net.attach(node(A)), net.attach(node(B))
    links = await asyncio.wait_for(
        asyncio.gather(*(a.links.get(B, "control") for _ in range(10))), T
    )
    assert len({id(link) for link in links}) == 1
    assert a.stats["links_dialled"] == 1 and len(net.offers) == 1


async def test_frames_flow_over_dialled_links_both_ways(net: MemoryNet) -> None:
    a, b = net.attach(node(A)), net.attach(node(B))
    at_b: list[tuple[str, bytes]] = []
    at_a: list[tuple[str, bytes]] = []
    b.links.dispatcher.on(FrameType.GOSSIP, lambda link, p: at_b.append((link.peer, p)))
    a.links.dispatcher.on(FrameType.GOSSIP, lambda link, p: at_a.append((link.peer, p)))
    # queued while the link is dialled, then sent in order
    for i in range(5):
        assert a.links.post(B, "control", FrameType.GOSSIP, b"%d" % i)
    await until(lambda: len(at_b) == 5)
    assert at_b == [(A, b"%d" % i) for i in range(5)]
    # the answer goes back on the link that carried the question
    b.links.post(A, "control", FrameType.GOSSIP, b"reply")  # B dials its own link to A
    await until(lambda: at_a)
    assert at_a == [(B, b"reply")]
    assert a.stats["links_accepted"] == 1 and b.stats["links_dialled"] == 1


async def test_request_stream_over_the_pool(net: MemoryNet) -> None:
    a, b = net.attach(node(A)), net.attach(node(B))

    async def echo(link: Any, stream: Any, payload: bytes) -> None:
        stream.send(FrameType.REPLY, b"\x00" + payload[::-1])

    b.links.dispatcher.serve(FrameType.CALL, echo)
    link = await asyncio.wait_for(a.links.get(B, "control"), T)
    stream = link.open_stream()
    stream.send(FrameType.CALL, b"abc")
    assert await stream.next(T) == (FrameType.REPLY, b"\x00cba")


async def test_unreachable_peer_fails_fast_then_backs_off(net: MemoryNet) -> None:
    a = net.attach(node(A))
    net.down.add(B)
    with pytest.raises(LinkUnavailable):
        await asyncio.wait_for(a.links.get(B, "data"), T)
    assert a.stats["link_dial_failures"] == 1
    # within the backoff, background sends are refused at once, without dialling
    assert not a.links.post(B, "data", FrameType.GOSSIP, b"x")
    a.links.ensure(B, "data")
    await asyncio.sleep(0.01)
    assert a.stats["link_dial_failures"] == 1


async def test_get_fails_fast_during_the_backoff(net: MemoryNet) -> None:
    a = net.attach(node(A))
    net.down.add(B)
    with pytest.raises(LinkUnavailable):
        await asyncio.wait_for(a.links.get(B, "data"), T)
    started = time.monotonic()
    with pytest.raises(LinkUnavailable, match="retrying"):
        await a.links.get(B, "data")  # no dial: the last one failed a moment ago
    assert time.monotonic() - started < 0.05
    assert a.stats["link_dial_failures"] == 1
    # the other kind has its own backoff
    net.down.discard(B)
    net.attach(node(B))
    assert (await asyncio.wait_for(a.links.get(B, "control"), T)).is_open


async def test_a_peer_that_links_to_us_is_dialled_again_at_once(net: MemoryNet) -> None:
    a, b = net.attach(node(A)), net.attach(node(B))
    net.down.add(B)
    with pytest.raises(LinkUnavailable):
        await asyncio.wait_for(a.links.get(B, "data"), T)
    net.down.discard(B)
    # B comes back and links to A: A forgets its backoff for B
    await asyncio.wait_for(b.links.get(A, "control"), T)
    link = await asyncio.wait_for(a.links.get(B, "data"), T)
    assert link.is_open


async def test_a_request_for_a_live_member_dials_through_the_backoff(net: MemoryNet) -> None:
    """After a partition heals, a forwarded request (``retry_now``: routing knows its owner is
    a live member) dials at once instead of failing for the rest of the backoff."""
    a = net.attach(node(A))
    net.down.add(B)
    with pytest.raises(LinkUnavailable):
        await asyncio.wait_for(a.links.get(B, "data"), T)
    with pytest.raises(LinkUnavailable, match="retrying"):
        await a.links.get(B, "data")
    net.down.discard(B)
    net.attach(node(B))
    link = await asyncio.wait_for(a.links.get(B, "data", retry_now=True), T)
    assert link.is_open


async def test_revive_forgets_the_backoff(net: MemoryNet) -> None:
    a = net.attach(node(A))
    net.down.add(B)
    with pytest.raises(LinkUnavailable):
        await asyncio.wait_for(a.links.get(B, "control"), T)
    assert not a.links.post(B, "control", FrameType.GOSSIP, b"x")
    net.down.discard(B)
    net.attach(node(B))
    a.links.revive(B)  # gossip heard from B
    assert (await asyncio.wait_for(a.links.get(B, "control"), T)).is_open
    assert a.links.last_errors.get(B) is None


async def test_text_messages_are_protocol_errors(net: MemoryNet) -> None:
    a, b = net.attach(node(A)), net.attach(node(B))
    # from the acceptor to the dialler
    link = await asyncio.wait_for(a.links.get(B, "data"), T)
    net.sockets[-1].inbox.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, "hello", None))
    await asyncio.wait_for(link.closed.wait(), T)
    assert a.stats["link_protocol_errors"] == 1 and "text" in link.close_reason
    # from the dialler to the acceptor
    link = await asyncio.wait_for(a.links.get(B, "control"), T)
    await net.sockets[-1].to_server.put({"type": "websocket.receive", "text": "hello"})
    await until(lambda: b.stats["link_protocol_errors"] == 1)
    await asyncio.wait_for(link.closed.wait(), T)


async def test_posts_queued_for_a_failing_dial_are_dropped_and_counted(net: MemoryNet) -> None:
    a = net.attach(node(A))
    net.down.add(B)
    assert a.links.post(B, "control", FrameType.GOSSIP, b"1")
    assert a.links.post(B, "control", FrameType.GOSSIP, b"2")
    assert a.links.pending_control() == 2
    await until(lambda: a.stats["link_pending_dropped"] == 2)
    assert a.links.pending_control() == 0


async def test_pending_posts_are_bounded(net: MemoryNet) -> None:
    a, _ = net.attach(node(A)), net.attach(node(B))
    a.links.max_pending = 3
    results = [a.links.post(B, "data", FrameType.GOSSIP, b"x") for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert a.stats["link_pending_dropped"] == 2


async def test_wrong_secret_is_refused_before_accepting(net: MemoryNet) -> None:
    a, b = net.attach(node(A)), net.attach(node(B, secret="another-secret-0123456789"))
    with pytest.raises(LinkUnavailable, match="refused"):
        await asyncio.wait_for(a.links.get(B, "data"), T)
    assert b.stats["links_refused"] == 1 and b.stats["links_accepted"] == 0
    assert a.stats["link_dial_failures"] == 1


async def test_node_url_mismatch_is_refused(net: MemoryNet) -> None:
    a = net.attach(node(A))
    c = node(C)
    net.nodes[B] = c  # B's address answers, but the process there thinks it is C
    with pytest.raises(LinkUnavailable):
        await asyncio.wait_for(a.links.get(B, "data"), T)
    assert c.stats["links_refused"] == 1


async def ws_offer(mesh: SioMesh, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Present an upgrade to ``/_siomesh/link`` with ``headers``; what the mesh sent back."""
    sent: list[dict[str, Any]] = []
    inbox: list[dict[str, Any]] = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/_siomesh/link",
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
    }
    await asyncio.wait_for(mesh(scope, receive, send), T)
    return sent


async def test_replayed_offer_is_refused(net: MemoryNet) -> None:
    a, b = net.attach(node(A)), net.attach(node(B))
    await asyncio.wait_for(a.links.get(B, "data"), T)
    sent = await ws_offer(b, net.offers[0])  # the captured offer, sent again
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert b.stats["links_refused"] == 1


async def test_offer_without_ack_is_not_a_link(net: MemoryNet) -> None:
    b = net.attach(node(B))
    offer = Offer(
        sender=A,
        recipient=B,
        kind="data",
        generation=1,
        nonce=secrets.token_bytes(16),
        time_ms=int(time.time() * 1000),
    )
    # a valid offer (captured in flight, say), but the replayer cannot produce the ack
    sent = await ws_offer(b, LinkSecret(SECRET).offer_headers(offer))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert b.stats["links_refused"] == 1 and b.stats["links_accepted"] == 0


async def test_no_offer_headers_is_refused(net: MemoryNet) -> None:
    b = net.attach(node(B))
    assert await ws_offer(b, {}) == [{"type": "websocket.close", "code": 1008}]
    assert b.stats["links_refused"] == 1


async def test_a_closed_link_is_replaced_on_the_next_get(net: MemoryNet) -> None:
    a, b = net.attach(node(A)), net.attach(node(B))
    down: list[Any] = []
    a.links.on_link_down(down.append)
    b_down: list[Any] = []
    b.links.on_link_down(b_down.append)
    first = await asyncio.wait_for(a.links.get(B, "data"), T)
    await first.shutdown(reason="test")
    await until(lambda: down == [first] and len(b_down) == 1)
    assert a.links.current(B, "data") is None
    second = await asyncio.wait_for(a.links.get(B, "data"), T)
    assert second is not first and second.is_open
    assert a.stats["links_dialled"] == 2


async def test_close_closes_every_link_and_refuses_new_ones(net: MemoryNet) -> None:
    a, b = net.attach(node(A)), net.attach(node(B))
    link = await asyncio.wait_for(a.links.get(B, "data"), T)
    await a.links.close()
    assert not link.is_open
    with pytest.raises(LinkUnavailable, match="stopping"):
        await a.links.get(B, "data")
    assert not a.links.post(B, "data", FrameType.GOSSIP, b"")
    await until(lambda: b.links.open_links() == 0)
