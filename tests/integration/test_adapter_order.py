"""The adapter keeps order across nodes (issue 15): 3 real SioMesh nodes behind real nginx
round-robin, python-socketio clients (half polling only, half polling then WebSocket), shouts
made on one node after another. Every receiver must get every shout once and in order:

* emit-completion order: shout k+1 is asked of another client, on another node, only once the
  call that made shout k returned, so shout k's emit had returned on its node;
* causal order: a client that receives shout k makes its own node shout k + 1 at once.

Some tests make one node apply its peers' messages late (``ORDER_APPLY_DELAY``, a loaded
node): without the contract of docs/adapter.md ("Delivery contract") a receiver on it then gets
the shouts out of order every time, not once in a while. Each test starts a fresh cluster (cold
peer links, as in the issue) and is bounded; every process is ended by its pid."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import socketio

from siomesh.benchkit.procs import Proc, end_all, stop_all
from tests.conftest import require_binary
from tests.harness.balancers import Balancer, start_balancer
from tests.harness.nodes import start_node, wait_healthy
from tests.harness.ports import LOOPBACK, free_ports

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.order_app:app"
ROOM = "r"
CLIENTS = 18
MEMBERS = 12  # the first 12 clients join the room
SHOUTS = 30
DELAY = 0.02  # how late a "loaded" node applies its peers' messages, seconds


@dataclass
class Cluster:
    urls: list[str]
    procs: list[Proc]
    lb: Balancer


def start_cluster(tmp: Path, env: Mapping[int, Mapping[str, str]] | None = None) -> Cluster:
    """3 nodes of the order app behind nginx. ``env``: extra variables per node index, where
    ``{0}``, ``{1}``, ``{2}`` stand for the nodes' URLs."""
    require_binary("nginx")
    ports = free_ports(3)
    urls = [f"http://{LOOPBACK}:{p}" for p in ports]
    procs: list[Proc] = []
    try:
        for i, port in enumerate(ports):
            extra = {k: v.format(*urls) for k, v in (env or {}).get(i, {}).items()}
            extra["PYTHONPATH"] = str(ROOT)
            procs.append(
                start_node(tmp, f"n{i}", port, node_url=urls[i], peers=urls, env=extra, app=APP)
            )
        for url, proc in zip(urls, procs, strict=True):
            wait_healthy(url, proc)
        lb = start_balancer("nginx", [f"{LOOPBACK}:{p}" for p in ports], tmp / "nginx")
    except BaseException:
        stop_all(procs)
        raise
    return Cluster(urls, procs, lb)


@pytest.fixture
def stoppers() -> Iterator[list[Cluster]]:
    started: list[Cluster] = []
    yield started
    for cluster in started:
        with contextlib.suppress(Exception):
            cluster.lb.stop()
        end_all(cluster.procs)


@dataclass(eq=False)  # hashed by identity
class Receiver:
    index: int
    client: socketio.AsyncClient
    polling: bool
    node: str = ""
    sid: str = ""
    got: list[int] = field(default_factory=list)
    bad: list[Any] = field(default_factory=list)  # payloads that did not decode
    disconnects: list[str] = field(default_factory=list)


def _decode(data: Any) -> int | None:
    if isinstance(data, int):
        return data
    if isinstance(data, list) and len(data) == 2 and isinstance(data[0], int):
        k, raw = data
        if raw == k.to_bytes(4, "big"):
            return k
    return None


async def connect_clients(
    url: str, count: int = CLIENTS, websocket_only: bool = False
) -> list[Receiver]:
    """``count`` clients through the balancer (even ones polling only, odd ones polling then
    WebSocket; or all WebSocket only); they record every ``shout`` (and ack it, for calls)."""
    receivers: list[Receiver] = []
    for i in range(count):
        polling = i % 2 == 0 and not websocket_only
        r = Receiver(i, socketio.AsyncClient(reconnection=False), polling=polling)

        async def on_shout(data: Any, r: Receiver = r) -> str:
            k = _decode(data)
            if k is None:
                r.bad.append(data)
                return "bad"
            r.got.append(k)
            return f"ok:{k}"

        async def on_disconnect(reason: Any = None, r: Receiver = r) -> None:
            r.disconnects.append(str(reason))

        r.client.on("shout", on_shout)
        r.client.on("disconnect", on_disconnect)
        receivers.append(r)

    async def connect(r: Receiver) -> None:
        transports = ["polling"] if r.polling else ["polling", "websocket"]
        if websocket_only:
            transports = ["websocket"]
        await asyncio.wait_for(r.client.connect(url, transports=transports, wait_timeout=10), 20)
        info = await r.client.call("whoami", timeout=10)
        r.node, r.sid = info["node"], info["sid"]

    await asyncio.gather(*(connect(r) for r in receivers))
    return receivers


async def close_all(receivers: Iterable[Receiver]) -> None:
    """Disconnect every client at once (a polling client may take its whole 3 s bound)."""

    async def close(client: socketio.AsyncClient) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 3)

    await asyncio.gather(*(close(r.client) for r in receivers))


async def join(receivers: Iterable[Receiver]) -> None:
    answers = await asyncio.gather(*(r.client.call("join", ROOM, timeout=10) for r in receivers))
    assert all(answers)


def rotation(receivers: list[Receiver], urls: list[str], count: int) -> list[Receiver]:
    """Who shouts each shout: the nodes in turn, and a different client of that node each
    round (each client shouts on the node that holds its session)."""
    by_node = {url: [r for r in receivers if r.node == url] for url in urls}
    assert all(by_node.values()), {u: len(v) for u, v in by_node.items()}
    return [by_node[urls[k % 3]][(k // 3) % len(by_node[urls[k % 3]])] for k in range(count)]


async def expect_in_order(receivers: list[Receiver], count: int) -> None:
    """Every receiver gets shouts 0..count-1, once each, in order (bounded wait, then a short
    watch for extras)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(len(r.got) < count for r in receivers):
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    wrong = {
        f"{r.index} ({'polling' if r.polling else r.client.transport()} on {r.node})": r.got
        for r in receivers
        if r.got != list(range(count)) or r.bad
    }
    assert not wrong, wrong
    dropped = {r.index: r.disconnects for r in receivers if r.disconnects}
    assert not dropped, dropped


async def shout_in_turn(
    receivers: list[Receiver], urls: list[str], to: Any, *, count: int = SHOUTS, **spec: Any
) -> float:
    """Shouts 0..count-1, each by the next shouter, each ``call`` awaited before the next;
    returns the seconds they took."""
    shouters = rotation(receivers, urls, count)
    began = time.monotonic()
    for k, shouter in enumerate(shouters):
        answer = await shouter.client.call("shout", {"k": k, "to": to, **spec}, timeout=10)
        assert answer is True or answer == [f"ok:{k}"] * len(to), (k, answer)
    return time.monotonic() - began


async def test_shouts_rotating_across_nodes_reach_a_room_in_order(
    tmp_path: Path, stoppers: list[Cluster]
) -> None:
    """The issue's scenario: 18 clients through nginx round-robin on a fresh cluster, 12 in a
    room, members of every node shouting in turn."""
    cluster = start_cluster(tmp_path)
    stoppers.append(cluster)
    receivers = await connect_clients(cluster.lb.url)
    try:
        members = receivers[:MEMBERS]
        await join(members)
        took = await shout_in_turn(receivers, cluster.urls, ROOM)
        await expect_in_order(members, SHOUTS)
        assert all(r.got == [] for r in receivers[MEMBERS:])
        assert took < 10, took
    finally:
        await close_all(receivers)


async def test_the_first_shouts_of_a_fresh_cluster_stay_in_order(
    tmp_path: Path, stoppers: list[Cluster]
) -> None:
    """WebSocket-only clients through nginx are served where they land: nothing is forwarded,
    so no data link between the nodes is up when the first shouts are made. The first message
    from a node to each peer waits for that link to be dialled (TCP, WebSocket and link
    handshakes: 5-20 ms here), far longer than the clients' round trip (~1 ms): without
    emit-completion order the next shout overtook it nearly every time (issue 15's
    ``[1, 0, 2, 3, ...]``)."""
    cluster = start_cluster(tmp_path)
    stoppers.append(cluster)
    receivers = await connect_clients(cluster.lb.url, count=9, websocket_only=True)
    try:
        await join(receivers)
        await shout_in_turn(receivers, cluster.urls, ROOM, count=12)
        await expect_in_order(receivers, 12)
    finally:
        await close_all(receivers)


async def test_shouts_stay_in_order_when_a_node_applies_its_peers_late(
    tmp_path: Path, stoppers: list[Cluster]
) -> None:
    """Every node applies what its peers send 20 ms late (a loaded node): a client round trip
    is then faster than a peer message, so without emit-completion order every shout made on
    another node overtakes the previous one. Shouts to the room, then to a list of sids with
    binary payloads."""
    delayed = {"ORDER_APPLY_DELAY": str(DELAY)}
    cluster = start_cluster(tmp_path, {0: delayed, 1: delayed, 2: delayed})
    stoppers.append(cluster)
    receivers = await connect_clients(cluster.lb.url)
    try:
        members = receivers[:MEMBERS]
        await join(members)
        await shout_in_turn(receivers, cluster.urls, ROOM, count=24)
        await expect_in_order(members, 24)
        # to=[sids] with bytes in the payload: the polling-only clients, wherever they are.
        # (Not mixed with WebSocket clients: python-socketio shares one Engine.IO packet
        # between a broadcast's recipients and python-engineio caches its first encoding, so
        # a binary broadcast to a WebSocket and a polling client of one node fails for the
        # second, with or without siomesh; calls, below, are per recipient.)
        targets = [r for r in receivers if r.polling]
        for r in receivers:
            r.got.clear()
        sids = [r.sid for r in targets]
        await shout_in_turn(receivers, cluster.urls, sids, count=24, bytes=True)
        await expect_in_order(targets, 24)
        assert all(r.got == [] for r in receivers if r.sid not in sids)
    finally:
        await close_all(receivers)


async def test_calls_to_sids_on_other_nodes_are_answered_in_order(
    tmp_path: Path, stoppers: list[Cluster]
) -> None:
    """``sio.call`` to clients of other nodes (their acks come back across the mesh), with
    binary payloads, shouters rotating over the nodes, a loaded node among them: every call is
    answered, every target gets every shout in order, and no call waits for a timeout."""
    cluster = start_cluster(tmp_path, {2: {"ORDER_APPLY_DELAY": str(DELAY)}})
    stoppers.append(cluster)
    receivers = await connect_clients(cluster.lb.url)
    try:
        targets = [next(r for r in receivers if r.node == url) for url in cluster.urls]
        targets += [next(r for r in reversed(receivers) if r.node == url) for url in cluster.urls]
        targets = sorted(set(targets), key=lambda r: r.index)
        sids = [r.sid for r in targets]
        took = await shout_in_turn(receivers, cluster.urls, sids, count=20, mode="call", bytes=True)
        await expect_in_order(targets, 20)
        assert took < 10, took
    finally:
        await close_all(receivers)


async def test_a_client_that_received_a_shout_and_shouts_is_heard_after_it(
    tmp_path: Path, stoppers: list[Cluster]
) -> None:
    """Causal order, with a shouter on each node: the shouter of node j, on receiving shout k
    with (k + 1) % 3 == j, makes its node shout k + 1 at once (nothing awaited in between, no
    driver round trip). Node 2 applies node 0's messages late, so node 1's shout k + 1 would
    reach node 2's clients before node 0's shout k unless node 1 holds it back until shout k is
    applied everywhere."""
    cluster = start_cluster(
        tmp_path, {2: {"ORDER_APPLY_DELAY": str(DELAY), "ORDER_APPLY_DELAY_FROM": "{0}"}}
    )
    stoppers.append(cluster)
    receivers = await connect_clients(cluster.lb.url)
    count = SHOUTS
    done = asyncio.Event()
    try:
        shouters = [next(r for r in receivers if r.node == url) for url in cluster.urls]
        listeners = sorted(set(receivers[:MEMBERS] + shouters), key=lambda r: r.index)
        await join(listeners)

        for j, shouter in enumerate(shouters):

            async def relay(data: Any, j: int = j, shouter: Receiver = shouter) -> None:
                k = _decode(data)
                if k is None:
                    return
                shouter.got.append(k)
                if k + 1 >= count:
                    done.set()
                elif (k + 1) % 3 == j:
                    await shouter.client.emit("shout", {"k": k + 1, "to": ROOM})

            shouter.client.on("shout", relay)

        await shouters[0].client.call("shout", {"k": 0, "to": ROOM}, timeout=10)
        await asyncio.wait_for(done.wait(), 15)
        await expect_in_order(listeners, count)
    finally:
        await close_all(receivers)
