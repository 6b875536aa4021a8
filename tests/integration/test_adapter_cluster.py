"""The mesh adapter across 3 real uvicorn nodes: emits, rooms, acks, namespaces, binary payloads,
cluster-wide calls and peer authentication. Clients connect straight to the nodes over
WebSocket, spread round-robin, so every cross-node path is exercised."""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.apps.adapter_clients import Client, close_all, connect_all, wait_until  # noqa: E402
from tests.apps.adapter_cluster import AdapterCluster  # noqa: E402

pytestmark = pytest.mark.timeout(120)

SETTLE = 0.3  # after the expected messages arrived, how long to watch for extras


@pytest.fixture(scope="module")
def cluster() -> Iterator[AdapterCluster]:
    with AdapterCluster(3) as c:
        yield c


@pytest.fixture
async def clients(cluster: AdapterCluster) -> AsyncIterator[list[Client]]:
    """Six clients: 0..5 on nodes 0,1,2,0,1,2."""
    urls = [n.url for n in cluster.nodes]
    conns = await connect_all(urls * 2)
    yield conns
    await close_all(conns)


async def test_each_client_is_on_the_expected_node(
    cluster: AdapterCluster, clients: list[Client]
) -> None:
    for i, c in enumerate(clients):
        info = await c.ask("whoami")
        assert info["node"] == cluster.nodes[i % 3].url
        assert info["manager"] == "MeshManager"
        assert info["sid"] == c.sid


async def test_broadcast_reaches_every_client_exactly_once(clients: list[Client]) -> None:
    await clients[1].ask("emit", {"event": "news", "data": {"n": 1}})
    assert await wait_until(lambda: all(c.got("news") for c in clients))
    await asyncio.sleep(SETTLE)
    assert [c.got("news") for c in clients] == [[({"n": 1},)]] * 6


async def test_broadcast_with_skip_sid_single_and_list(clients: list[Client]) -> None:
    await clients[0].ask("emit", {"event": "a", "data": 1, "skip_sid": "self"})
    assert await wait_until(lambda: all(c.got("a") for c in clients[1:]))
    skipped = [clients[2].sid, clients[4].sid]
    await clients[0].ask("emit", {"event": "b", "data": 2, "skip_sid": skipped})
    expect_b = [0, 1, 3, 5]
    assert await wait_until(lambda: all(clients[i].got("b") for i in expect_b))
    await asyncio.sleep(SETTLE)
    assert [len(c.got("a")) for c in clients] == [0, 1, 1, 1, 1, 1]
    assert [len(c.got("b")) for c in clients] == [1, 1, 0, 1, 0, 1]


async def test_room_emit_reaches_exactly_the_members_on_every_node(
    clients: list[Client],
) -> None:
    members = [1, 2, 3]
    for i in members:
        assert await clients[i].ask("join", "blue")
    await clients[0].ask("emit", {"event": "room", "data": "x", "to": "blue"})
    assert await wait_until(lambda: all(clients[i].got("room") for i in members))
    await asyncio.sleep(SETTLE)
    assert [len(c.got("room")) for c in clients] == [0, 1, 1, 1, 0, 0]
    # a list of rooms: a member of both gets it once
    assert await clients[2].ask("join", "green")
    assert await clients[4].ask("join", "green")
    await clients[5].ask("emit", {"event": "rooms", "data": "y", "to": ["blue", "green"]})
    expect = [1, 2, 3, 4]
    assert await wait_until(lambda: all(clients[i].got("rooms") for i in expect))
    await asyncio.sleep(SETTLE)
    assert [len(c.got("rooms")) for c in clients] == [0, 1, 1, 1, 1, 0]


async def test_emit_to_a_sid_on_another_node(clients: list[Client]) -> None:
    await clients[0].ask("emit", {"event": "direct", "data": "d", "to": clients[4].sid})
    assert await wait_until(lambda: bool(clients[4].got("direct")))
    await asyncio.sleep(SETTLE)
    assert [len(c.got("direct")) for c in clients] == [0, 0, 0, 0, 1, 0]


async def test_binary_payloads_cross_nodes(clients: list[Client]) -> None:
    blob = bytes(range(256)) * 4
    await clients[0].ask(
        "emit", {"event": "bin", "data": base64.b64encode(blob).decode(), "bytes": True}
    )
    assert await wait_until(lambda: all(c.got("bin") for c in clients))
    assert all(c.got("bin") == [(blob,)] for c in clients)


async def test_ack_from_a_client_on_another_node_returns_to_the_caller(
    clients: list[Client],
) -> None:
    assert await clients[0].ask("call", {"to": clients[1].sid, "data": "hi"}) == {
        "answer": "pong:hi"
    }
    assert await clients[0].ask("call", {"to": clients[3].sid, "data": "local"}) == {
        "answer": "pong:local"
    }
    blob = b"\x00\x01binary\xff"
    reply = await clients[2].ask(
        "call", {"to": clients[0].sid, "data": base64.b64encode(blob).decode(), "bytes": True}
    )
    assert base64.b64decode(reply["bytes"]) == blob[::-1]


async def test_remote_enter_leave_close_room_and_disconnect(clients: list[Client]) -> None:
    target = clients[2]  # on node 2; operations issued from node 0
    driver = clients[0]
    await driver.ask("room_op", {"op": "enter", "sid": target.sid, "room": "red"})
    await asyncio.sleep(SETTLE)
    await driver.ask("emit", {"event": "r1", "data": 1, "to": "red"})
    assert await wait_until(lambda: bool(target.got("r1")))
    await driver.ask("room_op", {"op": "leave", "sid": target.sid, "room": "red"})
    await asyncio.sleep(SETTLE)
    await driver.ask("emit", {"event": "r2", "data": 2, "to": "red"})
    await asyncio.sleep(SETTLE * 2)
    assert target.got("r2") == []
    for c in (clients[1], clients[5]):
        await c.ask("join", "doomed")
    await driver.ask("room_op", {"op": "close", "room": "doomed"})
    await asyncio.sleep(SETTLE)
    await driver.ask("emit", {"event": "r3", "data": 3, "to": "doomed"})
    await asyncio.sleep(SETTLE * 2)
    assert all(c.got("r3") == [] for c in clients)
    await driver.ask("room_op", {"op": "disconnect", "sid": target.sid})
    await asyncio.wait_for(target.disconnected.wait(), 10)


async def test_namespaces_are_kept_apart(cluster: AdapterCluster, clients: list[Client]) -> None:
    urls = [n.url for n in cluster.nodes]
    chat = await connect_all(urls, namespace="/chat")
    try:
        await chat[0].ask("emit", {"event": "hey", "data": "chat"})
        assert await wait_until(lambda: all(c.got("hey") for c in chat))
        await clients[0].ask("emit", {"event": "hey", "data": "root"})
        assert await wait_until(lambda: all(c.got("hey") for c in clients))
        await asyncio.sleep(SETTLE)
        assert all(c.got("hey") == [("chat",)] for c in chat)
        assert all(c.got("hey") == [("root",)] for c in clients)
        reply = await chat[1].ask("cluster", {"op": "server_side_emit"})
        assert sorted(reply["responses"]) == sorted([urls[0], urls[2]])
    finally:
        await close_all(chat)


async def test_server_side_emit_with_and_without_acks(
    cluster: AdapterCluster, clients: list[Client]
) -> None:
    urls = [n.url for n in cluster.nodes]
    reply = await clients[0].ask("cluster", {"op": "server_side_emit", "args": ["a", 2]})
    assert "partial" not in reply
    assert sorted(r["node"] for r in reply["responses"]) == sorted(urls[1:])
    assert all(r["args"] == ["a", 2] for r in reply["responses"])
    reply = await clients[0].ask("cluster", {"op": "server_side_emit", "with_ack": False})
    assert reply == {"responses": None}
    reply = await clients[0].ask("cluster", {"op": "server_side_emit", "event": "nobody"})
    assert reply == {"responses": []}


async def test_fetch_sockets_all_rooms_and_server_count(
    cluster: AdapterCluster, clients: list[Client]
) -> None:
    urls = [n.url for n in cluster.nodes]
    await clients[4].ask("set_data", {"user": "ann", "blob": None})
    await clients[1].ask("join", "fetch-room")
    await clients[5].ask("join", "fetch-room")
    reply = await clients[0].ask("cluster", {"op": "fetch_sockets"})
    found = {s["sid"]: s for s in reply["responses"]}
    assert set(found) == {c.sid for c in clients}
    for i, c in enumerate(clients):
        assert found[c.sid]["owner"] == urls[i % 3]
        assert c.sid in found[c.sid]["rooms"]
    assert found[clients[4].sid]["data"] == {"user": "ann", "blob": None}
    assert "fetch-room" in found[clients[5].sid]["rooms"]
    reply = await clients[2].ask("cluster", {"op": "fetch_sockets", "room": "fetch-room"})
    assert sorted(s["sid"] for s in reply["responses"]) == sorted([clients[1].sid, clients[5].sid])
    reply = await clients[2].ask("cluster", {"op": "all_rooms"})
    assert "fetch-room" in reply["responses"]
    assert not any(c.sid in reply["responses"] for c in clients)
    assert (await clients[0].ask("cluster", {"op": "server_count"}))["responses"] == 3


async def test_sockets_join_leave_and_disconnect_sockets(clients: list[Client]) -> None:
    await clients[3].ask("join", "vip")
    await clients[4].ask("join", "vip")
    await clients[0].ask(
        "cluster", {"op": "sockets_join", "rooms": ["gold"], "room": "vip"}
    )  # members of vip (nodes 0 and 1) also join gold
    await asyncio.sleep(SETTLE)
    await clients[2].ask("emit", {"event": "g", "data": 1, "to": "gold"})
    assert await wait_until(lambda: bool(clients[3].got("g") and clients[4].got("g")))
    await asyncio.sleep(SETTLE)
    assert [len(c.got("g")) for c in clients] == [0, 0, 0, 1, 1, 0]
    await clients[0].ask("cluster", {"op": "sockets_leave", "rooms": "gold"})
    await asyncio.sleep(SETTLE)
    await clients[2].ask("emit", {"event": "g2", "data": 1, "to": "gold"})
    await asyncio.sleep(SETTLE * 2)
    assert all(c.got("g2") == [] for c in clients)
    await clients[0].ask("cluster", {"op": "disconnect_sockets", "room": "vip"})
    await asyncio.wait_for(clients[3].disconnected.wait(), 10)
    await asyncio.wait_for(clients[4].disconnected.wait(), 10)
    await asyncio.sleep(SETTLE)
    assert [c.disconnected.is_set() for c in clients] == [False, False, False, True, True, False]


@pytest.mark.parametrize("endpoint", ["adapter", "adapter-call", "gossip"])
async def test_peer_messages_over_plain_http_have_no_effect(
    cluster: AdapterCluster, clients: list[Client], endpoint: str
) -> None:
    """Peers talk over authenticated links only: a POST to the old HTTP endpoints, signed-looking
    or not, is answered 404 without its body being read, and reaches nobody."""
    batch = (
        b'{"v":1,"epoch":1,"msgs":[[1,{"m":"emit","event":"evil","args":["x"],'
        b'"ns":"/","room":null,"skip":null,"cb":null}]]}'
    )
    url = f"{cluster.nodes[0].url}/_siomesh/{endpoint}"
    forged = {
        "x-siomesh-node": cluster.nodes[1].url,
        "x-siomesh-time": str(int(time.time() * 1000)),
        "x-siomesh-body": "0" * 64,
        "x-siomesh-signature": "f" * 64,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=batch) as resp:
            assert resp.status == 404
        async with http.post(url, data=batch, headers=forged) as resp:
            assert resp.status == 404
    await asyncio.sleep(SETTLE)
    assert all(c.got("evil") == [] for c in clients)
