"""MeshManager (installation, routing, cross-node emits, acks, calls, delivery guarantees)
in-process: meshes connected by real peer links over an in-memory network (no sockets)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import socketio

import siomesh.adapter.channel as channel_module
import siomesh.adapter.manager as manager_module
from siomesh import SioMesh
from siomesh.adapter import MeshManager, PartialResult, install_adapter
from siomesh.links.calls import encode_call
from siomesh.links.frames import FrameType, encode_u64_pair
from siomesh.links.link import Link
from siomesh.protocol.messages import MemberUpdate, Push, State
from siomesh.sid import make_sid

from .memlinks import MemoryNet

SECRET = "adapter-unit-secret-0123456789"
A = "http://127.0.0.1:9101"
B = "http://127.0.0.1:9102"
C = "http://127.0.0.1:9103"
T = 3.0  # bound of every wait


def node(
    url: str, peers: tuple[str, ...] = (A, B), env: dict[str, str] | None = None, **kw: Any
) -> tuple[SioMesh, Any]:
    sio = socketio.AsyncServer(async_mode="asgi", **kw)
    mesh = SioMesh(
        socketio.ASGIApp(sio), node_url=url, peers=list(peers), secret=SECRET, env=env or {}
    )
    return mesh, sio


def adapter(mesh: SioMesh) -> MeshManager:
    manager = mesh.node.adapter
    assert manager is not None
    return manager


async def until(condition: Any, timeout: float = T) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.002)

    await asyncio.wait_for(poll(), timeout)


# -- installation and routing ----------------------------------------------------------------


def test_installed_on_the_default_manager_only() -> None:
    mesh, sio = node(A)
    assert isinstance(sio.manager, MeshManager) and sio.manager is mesh.adapter
    assert sio.manager.server is sio
    dispatcher = mesh.links.dispatcher
    assert {FrameType.ADAPTER, FrameType.ADAPTER_GAP, FrameType.ADAPTER_ACK} <= set(
        dispatcher.callbacks
    )
    assert FrameType.CALL in dispatcher.handlers
    assert install_adapter(mesh.node) is None  # already a MeshManager: not the default type

    redis = socketio.AsyncRedisManager("redis://127.0.0.1:1/0")
    mesh2, sio2 = node(A, client_manager=redis)
    assert mesh2.adapter is None and sio2.manager is redis

    sio3 = socketio.AsyncServer(async_mode="asgi")
    plain = sio3.manager
    mesh3 = SioMesh(
        socketio.ASGIApp(sio3), node_url=A, peers=[B], secret=SECRET, env={}, adapter=False
    )
    assert mesh3.adapter is None and sio3.manager is plain
    assert FrameType.ADAPTER not in mesh3.links.dispatcher.callbacks


def learn(mesh: SioMesh, url: str, state: State, generation: int = 1, incarnation: int = 0) -> None:
    """Make ``mesh``'s gossip hear of member ``url`` in ``state`` (as if ``url`` said so)."""
    gossip = mesh.node.gossip
    assert gossip is not None
    update = MemberUpdate(url, url, generation, incarnation, state, "")
    gossip.node.receive(url, Push(url, (), (update,)), now=time.monotonic())


def test_routing_by_sid_tag_room_directory_and_broadcast() -> None:
    mesh, _ = node(A)
    mgr = adapter(mesh)
    sid_b = make_sid(mesh.keys, B, 1, b"\x01" * 12)
    sid_a = make_sid(mesh.keys, A, 1, b"\x02" * 12)
    sid_unknown = make_sid(mesh.keys, C, 1, b"\x03" * 12)
    # a seed gossip never heard from is not a peer of the adapter (routing still counts it)
    assert mesh.node.cluster.live_peers() == [B]
    assert mgr.sid_owner(sid_b) == "" and mgr._peers_for("/", None) == []
    assert mgr._route("/", None) == ([], [B]) and mgr._route("/", sid_b) == ([], [B])
    assert mgr.server_count() == 1
    learn(mesh, B, State.ALIVE)
    assert mgr.sid_owner(sid_b) == B and mgr.sid_owner(sid_a) == A
    assert mgr.sid_owner(sid_unknown) == "" and mgr.sid_owner("room") is None
    assert mgr.sid_owner(42) is None
    assert mgr._peers_for("/", None) == [B]
    assert mgr._peers_for("/", sid_b) == [B]
    assert mgr._peers_for("/", sid_a) == []
    assert mgr._peers_for("/", sid_unknown) == []
    assert mgr._peers_for("/", "room") == [B]  # no room directory: every live peer

    cluster: Any = mesh.node.cluster
    cluster.room_owners = lambda ns, room: set() if room == "empty" else None
    assert mgr._peers_for("/", "empty") == []
    assert mgr._peers_for("/", ["empty", sid_b]) == [B]
    assert mgr._peers_for("/", ["empty", "unknown"]) == [B]


def test_the_adapters_view_of_the_gossip_members() -> None:
    """GossipCluster.adapter_peers: (live, absent). A seed never heard from is absent, not live
    (routing alone still counts it); a dead member is absent (it may refute under the same
    generation); a member that left is neither; a known peer gossip forgot stays absent."""
    mesh, _ = node(A, peers=(A, B, C))
    cluster: Any = mesh.cluster
    assert cluster.live_peers() == [B, C] and cluster.is_live_member(B)
    assert cluster.adapter_peers() == ([], [B, C])
    learn(mesh, B, State.ALIVE)
    assert cluster.adapter_peers() == ([B], [C])
    learn(mesh, B, State.SUSPECT)
    assert cluster.adapter_peers() == ([B], [C])  # suspect is still live
    learn(mesh, B, State.DEAD)
    assert cluster.adapter_peers() == ([], [B, C])
    learn(mesh, B, State.ALIVE, incarnation=1)  # it refutes: the same process is back
    assert cluster.adapter_peers() == ([B], [C])
    learn(mesh, C, State.LEFT)
    assert cluster.adapter_peers() == ([B], [])
    other = "http://127.0.0.1:9104"
    assert cluster.adapter_peers([A, B, C, other]) == ([B], [other])
    learn(mesh, C, State.ALIVE, generation=2)  # a new process under C's URL
    assert cluster.adapter_peers([C]) == ([B, C], [])


# -- two meshes over in-memory links -----------------------------------------------------------


async def connected(sio: Any, eio_sid: str, namespace: str = "/") -> str:
    sid: str = await sio.manager.connect(eio_sid, namespace)
    return sid


class Cluster:
    """Meshes whose adapters talk over real links in memory; records what each node sends to
    its clients (``sent[url]``: (eio sid, encoded packet))."""

    def __init__(
        self,
        *urls: str,
        started: tuple[str, ...] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        #: the nodes started on entry (default: all), which then wait to hear from each other
        self.started = urls if started is None else started
        self.net = MemoryNet()
        self.meshes: dict[str, SioMesh] = {}
        self.sios: dict[str, Any] = {}
        self.sent: dict[str, list[tuple[str, Any]]] = {}
        for url in urls:
            mesh, sio = node(url, peers=urls, env=env)
            self.net.attach(mesh)
            self.meshes[url] = mesh
            self.sios[url] = sio
            self.sent[url] = []
            self._record(mesh, sio, url)

    def _record(self, mesh: SioMesh, sio: Any, url: str) -> None:
        """Record what reaches the clients, wherever it leaves: the adapter's fan-out (no
        client sessions exist here) and python-socketio's own senders (acked emits)."""

        async def send_eio(eio_sid: str, pkt: Any) -> None:
            self.sent[url].append((eio_sid, pkt.data))

        async def send_pkt(eio_sid: str, pkt: Any) -> None:
            self.sent[url].append((eio_sid, pkt.encode()))

        async def fan_out(eio_sids: list[str], packets: list[Any]) -> int:
            for eio_sid in eio_sids:
                for pkt in packets:
                    await send_eio(eio_sid, pkt)
            return len(eio_sids)

        sio._send_eio_packet = send_eio
        sio._send_packet = send_pkt
        mesh.node.seam.fan_out = fan_out  # type: ignore[method-assign]

    def mgr(self, url: str) -> MeshManager:
        return adapter(self.meshes[url])

    async def __aenter__(self) -> Cluster:
        for url in self.started:
            await self.meshes[url].startup()
        # the adapter sends to a seed once gossip has heard from it
        n = len(self.started)
        await until(lambda: all(self.mgr(u).server_count() == n for u in self.started))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.net.aclose()

    def queued(self) -> int:
        return sum(sum(self.mgr(url).queue_sizes().values()) for url in self.meshes)

    async def settle(self) -> None:
        """Every adapter message acknowledged (received) and applied everywhere."""
        await until(
            lambda: self.queued() == 0 and all(self.mgr(u).inbound_idle for u in self.meshes)
        )
        await asyncio.sleep(0.005)

    async def cut(self, source: str, peer: str) -> None:
        """``peer`` stops answering ``source``: no new link, and the ones up are closed."""
        self.net.down.add(peer)
        for kind in ("control", "data"):
            link = self.meshes[source].node.links.current(peer, kind)
            if link is not None:
                await link.shutdown(reason="cut")

    def data_link(self, source: str, peer: str) -> Link:
        link = self.meshes[source].node.links.current(peer, "data")
        assert link is not None
        return link


class Pair(Cluster):
    def __init__(self) -> None:
        super().__init__(A, B)
        self.a, self.b = self.meshes[A], self.meshes[B]
        self.sio_a, self.sio_b = self.sios[A], self.sios[B]

    async def __aenter__(self) -> Pair:
        await super().__aenter__()
        return self


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
        assert adapter(p.b).stats["received"] == 4


async def test_emits_arrive_in_order() -> None:
    async with Pair() as p:
        await connected(p.sio_b, "eioB1")
        for i in range(300):
            await p.sio_a.emit("n", i)
        await p.settle()
        assert [d for _, d in p.sent[B]] == [f'2["n",{i}]' for i in range(300)]
        assert p.mgr(A).link_stats()[B]["sent"] == 300
        assert p.mgr(A).link_stats()[B]["acked"] == 300


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


async def test_callback_needs_a_single_room() -> None:
    async with Pair() as p:
        with pytest.raises(ValueError, match="single room"):
            await p.sio_a.emit("ask", "q", callback=lambda *a: None)


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


async def test_close_room_everywhere() -> None:
    async with Pair() as p:
        b1 = await connected(p.sio_b, "eioB1")
        await p.sio_b.enter_room(b1, "doomed")
        await p.sio_a.close_room("doomed")
        await p.settle()
        assert "doomed" not in p.sio_b.manager.get_rooms(b1, "/")


async def test_cluster_calls() -> None:
    async with Pair() as p:
        b1 = await connected(p.sio_b, "eioB1")
        a1 = await connected(p.sio_a, "eioA1")
        adapter(p.b).on_server_event("hello", lambda *args: ["B", *args])

        @adapter(p.b).on_server_event("async")
        async def handler(x: int) -> int:
            return x + 1

        assert await adapter(p.a).server_side_emit("hello", 1, with_ack=True) == [["B", 1]]
        assert await adapter(p.a).server_side_emit("async", 41, with_ack=True) == [42]
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
        # calls go on the control link, adapter messages on the data link
        assert p.a.links.current(B, "control") is not None


async def test_server_side_emit_without_ack_is_ordered_with_emits() -> None:
    async with Pair() as p:
        await connected(p.sio_b, "eioB1")
        seen: list[Any] = []
        adapter(p.b).on_server_event("mark", lambda *args: seen.append(("event", *args)))
        original = p.sent[B]
        await p.sio_a.emit("before", 1)
        assert await adapter(p.a).server_side_emit("mark", 2) is None
        await p.sio_a.emit("after", 3)
        await p.settle()
        assert seen == [("event", 2)] and len(original) == 2


async def test_remote_socket_methods_act_where_the_client_is() -> None:
    async with Pair() as p:
        b1 = await connected(p.sio_b, "eioB1")
        (remote,) = [s for s in await adapter(p.a).fetch_sockets() if s.owner == B]
        await remote.join("vip")
        await p.settle()
        assert "vip" in p.sio_b.manager.get_rooms(b1, "/")
        await remote.emit("hi", "there")
        await p.settle()
        assert p.sent[B][-1] == ("eioB1", '2["hi","there"]')
        await remote.leave("vip")
        await p.settle()
        assert "vip" not in p.sio_b.manager.get_rooms(b1, "/")


async def test_a_resent_message_is_applied_once() -> None:
    """The link breaks after the peer applied messages but before their acks arrived: the
    sender resends them on the next link and the receiver drops the duplicates."""
    async with Pair() as p:
        await connected(p.sio_b, "eioB1")
        dispatcher = p.a.links.dispatcher
        on_ack = dispatcher.callbacks[FrameType.ADAPTER_ACK]
        dispatcher.on(FrameType.ADAPTER_ACK, lambda link, payload: None)  # acks are lost
        for i in range(5):
            await p.sio_a.emit("n", i)
        await until(lambda: adapter(p.b).stats["received"] == 5)
        assert p.mgr(A).queue_sizes()[B] == 5  # applied there, not acknowledged here
        first = p.data_link(A, B)
        await first.shutdown(reason="cut")
        dispatcher.on(FrameType.ADAPTER_ACK, on_ack)
        await p.sio_a.emit("n", 5)  # the next message brings up a new link
        await p.settle()
        assert p.data_link(A, B) is not first
        assert [d for _, d in p.sent[B]] == [f'2["n",{i}]' for i in range(6)]
        assert adapter(p.b).stats["duplicates"] == 5 and adapter(p.b).stats["received"] == 6
        assert p.mgr(A).link_stats()[B]["resent"] == 5


async def test_messages_wait_for_an_unreachable_member_then_arrive_in_order() -> None:
    async with Pair() as p:
        await connected(p.sio_b, "eioB1")
        p.net.down.add(B)
        for i in range(10):
            await p.sio_a.emit("n", i)  # never blocks
        await asyncio.sleep(0.05)
        assert p.mgr(A).queue_sizes()[B] == 10 and p.sent[B] == []
        p.net.down.discard(B)
        p.a.links._backoff.clear()  # do not wait out the dial backoff
        await p.sio_a.emit("n", 10)
        await p.settle()
        assert [d for _, d in p.sent[B]] == [f'2["n",{i}]' for i in range(11)]


async def test_queue_bound_folds_into_a_gap_and_the_peer_resyncs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(manager_module, "TICK", 0.01)
    async with Pair() as p:
        await connected(p.sio_b, "eioB1")
        b2 = await connected(p.sio_b, "eioB2")
        await p.sio_b.enter_room(b2, "blue")
        p.mgr(A).settings.max_queue = 5
        p.net.down.add(B)
        started = time.monotonic()
        for i in range(20):
            await p.sio_a.emit("n", i, to="blue")
        assert time.monotonic() - started < 1  # never blocks on the unreachable peer
        assert p.mgr(A).queue_sizes()[B] == 5
        stats = p.mgr(A).link_stats()[B]
        assert stats["gaps"] == 1 and stats["gap_messages"] == 15
        p.net.down.discard(B)
        p.a.links._backoff.clear()
        await p.settle()  # the tick pumps: 5 messages, then the gap
        assert [d for _, d in p.sent[B]] == [f'2["n",{i}]' for i in range(5)]
        b = adapter(p.b)
        assert b.stats["gaps_received"] == 1
        assert b.stats["resync_disconnects"] == 1  # only the room's client: it may have missed some


async def test_a_dead_peers_queue_becomes_one_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "TICK", 0.01)
    async with Pair() as p:
        await connected(p.sio_b, "eioB1")
        alive = play_dead(monkeypatch, p.a, B)
        p.net.down.add(B)
        for i in range(3):
            await p.sio_a.emit("n", i)
        alive["yes"] = False  # gossip declares B dead
        await until(lambda: p.mgr(A).link_stats()[B]["gaps"] == 1)
        assert p.mgr(A).queue_sizes()[B] == 0
        assert p.mgr(A).link_stats()[B]["gap_messages"] == 3
        # it comes back: it gets the gap, and its clients resync instead of missing messages
        alive["yes"] = True
        p.net.down.discard(B)
        p.a.links._backoff.clear()
        await p.settle()
        await until(lambda: adapter(p.b).stats["gaps_received"] == 1)
        assert p.sent[B] == [] and adapter(p.b).stats["resync_disconnects"] == 1


def play_dead(monkeypatch: pytest.MonkeyPatch, mesh: SioMesh, url: str) -> dict[str, bool]:
    """``mesh``'s adapter sees ``url`` as a dead member while ``alive["yes"]`` is False."""
    alive = {"yes": True}
    cluster: Any = mesh.cluster
    view = cluster.adapter_peers

    def adapter_peers(known: Any = ()) -> tuple[list[str], list[str]]:
        live, absent = view(known)
        if alive["yes"] or url not in live:
            return live, absent
        return [u for u in live if u != url], sorted({*absent, url})

    monkeypatch.setattr(cluster, "adapter_peers", adapter_peers)
    return alive


def record_gaps(c: Cluster, url: str) -> None:
    """Put a ``("gap", first)`` marker into ``c.sent[url]`` where ``url`` applies a gap."""
    mgr = c.mgr(url)
    apply_gap = mgr._inbound.apply_gap

    async def recorded(sender: str, detail: bytes) -> None:
        c.sent[url].append(("gap", json.loads(detail)["first"]))
        await apply_gap(sender, detail)

    mgr._inbound.apply_gap = recorded  # type: ignore[method-assign]


async def test_a_member_that_comes_back_gets_a_gap_for_what_was_emitted_while_it_was_dead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 18: emits made while a member is declared dead are not queued for it; when it
    comes back as the same process, a gap reaches it first (never a silent hole), and only its
    clients that may have missed something are disconnected."""
    monkeypatch.setattr(manager_module, "TICK", 0.01)
    async with Pair() as p:
        b1 = await connected(p.sio_b, "eioB1")
        await connected(p.sio_b, "eioB2")
        await p.sio_b.enter_room(b1, "r")
        record_gaps(p, B)
        await p.sio_a.emit("n", 0, to="r")
        await p.settle()
        alive = play_dead(monkeypatch, p.a, B)
        alive["yes"] = False
        for i in range(1, 4):
            await p.sio_a.emit("n", i, to="r")
        await asyncio.sleep(0.05)  # ticks: nothing is dialled or sent to a dead peer
        assert p.mgr(A).queue_sizes()[B] == 0
        stats = p.mgr(A).link_stats()[B]
        assert stats["gaps"] == 1 and stats["gap_messages"] == 3 and stats["sent"] == 1
        assert p.mgr(A).server_count() == 1
        alive["yes"] = True  # it refuted its death: same process, same generation
        await p.sio_a.emit("n", 4, to="r")
        await p.settle()
        assert p.sent[B] == [("eioB1", '2["n",0]'), ("gap", 2), ("eioB1", '2["n",4]')]
        b = adapter(p.b)
        assert b.stats["gaps_received"] == 1 and b.stats["resync_disconnects"] == 1
        assert b.stats["duplicates"] == 0


@pytest.mark.parametrize("skipped", [0, 2])
async def test_a_gap_after_a_frozen_member_applied_what_was_in_flight(
    monkeypatch: pytest.MonkeyPatch, skipped: int
) -> None:
    """A frozen member applies, when it resumes, what was in its socket buffer although the
    sender had given those messages up (it was declared dead meanwhile). Nothing is applied
    twice; the gap for them is skipped as a duplicate when they all arrived, and applied when
    anything was emitted while it was dead."""
    monkeypatch.setattr(manager_module, "TICK", 0.01)
    async with Pair() as p:
        b1 = await connected(p.sio_b, "eioB1")
        await p.sio_b.enter_room(b1, "r")
        record_gaps(p, B)
        dispatcher = p.a.links.dispatcher
        on_ack = dispatcher.callbacks[FrameType.ADAPTER_ACK]
        dispatcher.on(FrameType.ADAPTER_ACK, lambda link, payload: None)  # never acknowledged
        for i in range(3):
            await p.sio_a.emit("n", i, to="r")
        await until(lambda: adapter(p.b).stats["received"] == 3)  # applied there
        alive = play_dead(monkeypatch, p.a, B)
        alive["yes"] = False
        await until(lambda: p.mgr(A).link_stats()[B]["gap_messages"] == 3)  # abandoned
        for i in range(3, 3 + skipped):
            await p.sio_a.emit("n", i, to="r")
        dispatcher.on(FrameType.ADAPTER_ACK, on_ack)
        alive["yes"] = True
        await p.sio_a.emit("n", 9, to="r")
        await p.settle()
        delivered = [("eioB1", f'2["n",{i}]') for i in range(3)]
        b = adapter(p.b)
        if skipped:
            assert p.sent[B] == [*delivered, ("gap", 1), ("eioB1", '2["n",9]')]
            assert b.stats["gaps_received"] == 1 and b.stats["resync_disconnects"] == 1
        else:
            assert p.sent[B] == [*delivered, ("eioB1", '2["n",9]')]
            assert b.stats["gaps_received"] == 0 and b.stats["duplicates"] == 1


async def test_sid_operations_for_a_dead_members_client_resync_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A room change (or an emit) for a client of a dead member is not sent, and that client is
    disconnected to resync if its node comes back."""
    monkeypatch.setattr(manager_module, "TICK", 0.01)
    async with Pair() as p:
        b1 = await connected(p.sio_b, "eioB1")
        b2 = await connected(p.sio_b, "eioB2")
        alive = play_dead(monkeypatch, p.a, B)
        alive["yes"] = False
        assert p.mgr(A).sid_owner(b1) == ""
        await p.sio_a.enter_room(b1, "x")
        await p.sio_a.emit("hi", 1, to=b1)
        assert p.mgr(A).link_stats()[B]["gap_messages"] == 2
        alive["yes"] = True
        b = adapter(p.b)
        await until(lambda: b.stats["gaps_received"] == 1)
        assert "x" not in p.sio_b.manager.get_rooms(b1, "/")
        assert b.stats["gaps_received"] == 1 and b.stats["resync_disconnects"] == 1
        assert b2 in p.sio_b.manager.get_rooms(b2, "/")


async def test_a_seed_that_never_answered_is_not_a_peer_until_gossip_hears_from_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 18: nothing is queued for a seed gossip never heard from (no 10,000 messages held,
    no partition warning, no data link dialled); when it answers it becomes a peer, and its
    clients that may have missed what was emitted before get a gap first."""
    monkeypatch.setattr(manager_module, "TICK", 0.01)
    monkeypatch.setattr(channel_module, "STALL_WARNING", 0.02)
    c = Cluster(A, B, started=(A,))  # B is not running yet
    c.net.down.add(B)
    async with c:
        mgr = c.mgr(A)
        b1 = await connected(c.sios[B], "eioB1")
        assert mgr._view() == ([], [B]) and mgr.server_count() == 1
        for i in range(5):
            await c.sios[A].emit("n", i)
        await asyncio.sleep(0.1)
        assert mgr.queue_sizes() == {B: 0}
        stats = mgr.link_stats()[B]
        assert stats["gaps"] == 1 and stats["gap_messages"] == 5
        assert stats["stalls"] == 0 and stats["sent"] == 0
        assert c.meshes[A].node.links.current(B, "data") is None
        assert (B, "data") not in c.meshes[A].node.links._backoff  # never dialled
        record_gaps(c, B)
        c.net.down.discard(B)  # it starts and answers
        c.meshes[A].node.links._backoff.clear()
        await c.meshes[B].startup()
        await until(lambda: mgr.server_count() == 2)
        await c.sios[A].emit("n", 5)
        await c.settle()
        assert c.sent[B] == [("gap", 1), ("eioB1", '2["n",5]')]
        assert adapter(c.meshes[B]).stats["resync_disconnects"] == 1
        assert b1 in c.sios[B].manager.get_rooms(b1, "/")  # (no real socket to close here)


async def test_stop_does_not_wait_for_a_peer_that_is_not_live(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Pair() as p:
        await connected(p.sio_b, "eioB1")
        alive = play_dead(monkeypatch, p.a, B)
        alive["yes"] = False
        await p.sio_a.emit("n", 1)  # a gap for B, which cannot acknowledge it
        mgr = p.mgr(A)
        mgr.flush_timeout = 2.0
        started = time.monotonic()
        await mgr.stop()
        assert time.monotonic() - started < 0.5


async def test_stop_flushes_then_gives_up() -> None:
    async with Pair() as p:
        mgr = p.mgr(A)
        mgr.flush_timeout = 0.05
        p.net.down.add(B)
        await p.sio_a.emit("n", 1)
        started = time.monotonic()
        await mgr.stop()
        assert time.monotonic() - started < 1
        assert not mgr.running


# -- the delivery contract: emit-completion and causal order ----------------------------------


def slow_apply(c: Cluster, url: str, delay: float, senders: tuple[str, ...] = ()) -> None:
    """``url`` applies the emits of ``senders`` (all when empty) ``delay`` s late."""
    mgr = c.mgr(url)
    dispatch = mgr._inbound.dispatch

    async def late(msg: dict[str, Any], sender: str) -> None:
        if msg.get("m") == "emit" and (not senders or sender in senders):
            await asyncio.sleep(delay)
        await dispatch(msg, sender)

    mgr._inbound.dispatch = late  # type: ignore[method-assign]


def slow_receipt(c: Cluster, url: str, delay: float, senders: tuple[str, ...] = ()) -> None:
    """``url`` receives the adapter messages of ``senders`` (all when empty) ``delay`` s late,
    in order (as from a busy or distant node): it acknowledges them that late."""
    dispatcher = c.meshes[url].links.dispatcher
    on_frame = dispatcher.callbacks[FrameType.ADAPTER]
    loop = asyncio.get_running_loop()

    def late(link: Link, payload: bytes) -> None:
        if not senders or link.peer in senders:
            loop.call_later(delay, on_frame, link, payload)
        else:
            on_frame(link, payload)

    dispatcher.on(FrameType.ADAPTER, late)


def drop_stable_notices(mesh: SioMesh) -> None:
    """``mesh`` no longer hears stable watermarks (as from a node that predates them)."""
    dispatcher = mesh.links.dispatcher
    on_ack = dispatcher.callbacks[FrameType.ADAPTER_ACK]
    dispatcher.on(FrameType.ADAPTER_ACK, lambda link, payload: on_ack(link, payload[:16]))


def events(c: Cluster, url: str) -> list[str]:
    return [d for _, d in c.sent[url]]


async def test_an_emit_returns_once_every_peer_received_it() -> None:
    """Emit-completion order: C receives A's messages late, so A's emit returns only then;
    B's next emit reaches C's clients after A's (without the wait, B's came first)."""
    async with Cluster(A, B, C) as c:
        await connected(c.sios[C], "eioC1")
        slow_receipt(c, C, 0.05, senders=(A,))
        started = time.monotonic()
        await c.sios[A].emit("n", 1)
        assert 0.04 < time.monotonic() - started < c.mgr(A).order_timeout
        await c.sios[B].emit("n", 2)
        await c.settle()
        assert events(c, C) == ['2["n",1]', '2["n",2]']


async def test_an_emit_does_not_wait_for_its_peers_to_apply_it_and_order_holds() -> None:
    """C applies A's messages late (a slow fan-out): A's emit returns on C's receipt. Whatever
    is emitted after that, by B or by C itself, reaches C's clients after A's message: C
    applies what it received in arrival order, and its own emits wait for what it received
    before them."""
    async with Cluster(A, B, C) as c:
        await connected(c.sios[C], "eioC1")
        await c.sios[A].emit("warm", 0)
        await c.settle()
        slow_apply(c, C, 0.1, senders=(A,))
        started = time.monotonic()
        await c.sios[A].emit("n", 1)
        assert time.monotonic() - started < 0.08  # received, not applied yet
        assert events(c, C) == ['2["warm",0]']
        await c.sios[B].emit("n", 2)
        await c.sios[C].emit("n", 3)  # C's own: after what C received before
        assert events(c, C) == ['2["warm",0]', '2["n",1]', '2["n",2]', '2["n",3]']
        assert c.mgr(C).stats["turn_timeouts"] == 0


async def test_the_recovery_log_keeps_the_order_the_clients_got() -> None:
    """With connection state recovery, every node logs every event it delivers, and replays
    its log to a recovering client: C's own emit, made while A's message waits in C's apply
    queue, is logged after A's, as C's clients got them (it was logged first when the emit
    was called, and a client recovering on C got the two swapped)."""
    async with Cluster(A, C, env={"SIOMESH_RECOVERY_ENABLED": "1"}) as c:
        await connected(c.sios[C], "eioC1")
        slow_apply(c, C, 0.1, senders=(A,))
        await c.sios[A].emit("n", 1)  # received by C, not applied yet
        await c.sios[C].emit("n", 2)
        await c.settle()
        assert [json.loads(d[1:])[1] for d in events(c, C)] == [1, 2]
        recovery = c.meshes[C].node.recovery
        assert [entry.args[0] for entry in recovery.log.entries] == [1, 2]


async def test_a_local_delivery_waits_order_timeout_at_most_for_a_slow_apply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler run for a peer's message hangs: this node's own emits wait
    ``order_timeout`` at most for it, are counted, and a WARNING says so."""
    async with Cluster(A, B) as c:
        await connected(c.sios[B], "eioB1")
        slow_apply(c, B, 5.0, senders=(A,))
        c.mgr(B).order_timeout = 0.1
        await c.sios[A].emit("stuck", 1)
        started = time.monotonic()
        await c.sios[B].emit("own", 1)
        assert 0.09 < time.monotonic() - started < 1.0
        assert events(c, B) == ['2["own",1]']
        assert c.mgr(B).stats["turn_timeouts"] == 1
        assert "were not applied within adapter.order_timeout" in caplog.text


async def test_concurrent_emits_are_pipelined_and_stay_in_call_order() -> None:
    async with Cluster(A, B, C) as c:
        await connected(c.sios[B], "eioB1")
        await connected(c.sios[C], "eioC1")
        slow_apply(c, B, 0.002)
        slow_receipt(c, C, 0.002)
        c.mgr(A).order_timeout = 2.0
        started = time.monotonic()
        await asyncio.gather(*(c.sios[A].emit("n", i) for i in range(100)))
        took = time.monotonic() - started
        await c.settle()
        expected = [f'2["n",{i}]' for i in range(100)]
        assert events(c, B) == expected and events(c, C) == expected
        assert took < 1.0  # not one round trip each
        assert c.mgr(A).link_stats()[B]["order_timeouts"] == 0


async def test_a_client_that_received_a_message_is_heard_after_it_everywhere() -> None:
    """Causal order: B applied A's message m (C receives A's messages late); an emit B makes
    now (as a client of B would, on receiving m) reaches C after m: B holds it until A reports
    m received everywhere. Emits made on B meanwhile keep their call order."""
    async with Cluster(A, B, C) as c:
        await connected(c.sios[B], "eioB1")
        await connected(c.sios[C], "eioC1")
        await c.sios[A].emit("warm", 0)  # links up, stable watermarks announced
        await c.settle()
        slow_receipt(c, C, 0.05, senders=(A,))
        m = asyncio.ensure_future(c.sios[A].emit("m", 1))
        await until(lambda: '2["m",1]' in events(c, B))
        started = time.monotonic()
        await asyncio.gather(c.sios[B].emit("reply", 1), c.sios[B].emit("reply", 2))
        assert time.monotonic() - started > 0.02  # it waited for m to be stable
        await m
        await c.settle()
        assert events(c, C) == ['2["warm",0]', '2["m",1]', '2["reply",1]', '2["reply",2]']
        assert c.mgr(B).stats["causal_timeouts"] == 0


async def test_an_emit_cancelled_while_it_waits_for_causal_order_is_still_sent_in_order() -> None:
    """Its caller went away (a client disconnected, a node stops): the message, delivered
    here already, still goes to the peers, in its turn."""
    async with Cluster(A, B, C) as c:
        await connected(c.sios[C], "eioC1")
        await c.sios[A].emit("warm", 0)
        await c.settle()
        slow_receipt(c, C, 0.1, senders=(A,))
        m = asyncio.ensure_future(c.sios[A].emit("m", 1))
        await until(lambda: adapter(c.meshes[B]).stats["received"] == 2)
        reply = asyncio.ensure_future(c.sios[B].emit("reply", 1))
        await asyncio.sleep(0.02)
        assert c.mgr(B)._gate  # it waits for m to be received everywhere
        reply.cancel()
        await m
        await c.settle()
        assert events(c, C) == ['2["warm",0]', '2["m",1]', '2["reply",1]']
        assert not c.mgr(B)._gate


async def test_an_emit_waits_at_most_order_timeout_then_not_for_a_lagging_peer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer that stops acknowledging (frozen, cut off) holds an emit for ``order_timeout``
    at most, once: it is then lagging, not waited for, and counted, until it catches up."""
    async with Pair() as p:
        await connected(p.sio_b, "eioB1")
        mgr = p.mgr(A)
        mgr.order_timeout = 0.1
        dispatcher = p.a.links.dispatcher
        on_ack = dispatcher.callbacks[FrameType.ADAPTER_ACK]
        dispatcher.on(FrameType.ADAPTER_ACK, lambda link, payload: None)  # acks are lost
        started = time.monotonic()
        await p.sio_a.emit("n", 0)
        assert 0.09 < time.monotonic() - started < 0.5
        assert mgr.link_stats()[B]["order_timeouts"] == 1
        assert mgr.link_stats()[B]["lagging"] == 1
        assert "has not acknowledged anything for adapter.order_timeout" in caplog.text
        started = time.monotonic()
        for i in range(1, 6):
            await p.sio_a.emit("n", i)
        assert time.monotonic() - started < 0.09  # not waited for while it lags
        dispatcher.on(FrameType.ADAPTER_ACK, on_ack)
        await p.sio_a.emit("n", 6)  # acknowledged with everything before it: caught up
        await p.settle()
        assert not mgr._channels[B].lagging
        assert events(p, B) == [f'2["n",{i}]' for i in range(7)]
        assert mgr.link_stats()[B]["order_timeouts"] == 1


async def test_an_unreachable_peer_is_not_waited_for() -> None:
    async with Pair() as p:
        mgr = p.mgr(A)
        mgr.order_timeout = 2.0
        p.net.down.add(B)
        p.a.links.ensure(B, "data")
        await until(lambda: B in p.a.links.last_errors)  # the last dial failed
        started = time.monotonic()
        await p.sio_a.emit("n", 0)
        assert time.monotonic() - started < 0.5
        assert mgr._channels[B].lagging and mgr.queue_sizes()[B] == 1  # held for it


async def test_a_sender_that_never_reports_stability_holds_emits_once_at_most(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B applied A's message but A's stable watermark does not reach B (the link from A
    broke): B's next emit waits ``order_timeout``, is counted, and later ones do not wait."""
    async with Pair() as p:
        await connected(p.sio_a, "eioA1")
        await connected(p.sio_b, "eioB1")
        await p.sio_a.emit("n", 0)
        await p.settle()
        drop_stable_notices(p.b)
        await p.sio_a.emit("n", 1)
        await p.settle()
        b = p.mgr(B)
        b.order_timeout = 0.1
        started = time.monotonic()
        await p.sio_b.emit("r", 0)
        assert 0.09 < time.monotonic() - started < 0.5
        assert b.stats["causal_timeouts"] == 1
        assert "did not report within adapter.order_timeout" in caplog.text
        started = time.monotonic()
        await p.sio_b.emit("r", 1)
        assert time.monotonic() - started < 0.09
        await p.settle()
        assert [e for e in events(p, A) if "r" in e] == ['2["r",0]', '2["r",1]']
        assert p.mgr(B).link_stats()[A]["order_timeouts"] == 0  # A itself was not late


async def test_a_sender_without_stable_watermarks_is_not_waited_for() -> None:
    """A node that predates stable watermarks never announces them: nothing is held for it."""
    async with Pair() as p:
        await connected(p.sio_a, "eioA1")
        await connected(p.sio_b, "eioB1")
        drop_stable_notices(p.b)
        await p.sio_a.emit("n", 0)
        await p.settle()
        b = p.mgr(B)
        b.order_timeout = 1.0
        started = time.monotonic()
        await p.sio_b.emit("r", 0)
        assert time.monotonic() - started < 0.5 and b.stats["causal_timeouts"] == 0


async def test_emits_made_while_applying_a_peers_message_do_not_wait() -> None:
    """A server-event handler runs on the adapter's receive path: its emits do not wait for
    their peers (that would hold up the sender's later messages)."""
    async with Pair() as p:
        await connected(p.sio_a, "eioA1")
        slow_apply(p, A, 0.3)
        p.mgr(B).order_timeout = 1.0

        @p.mgr(B).on_server_event("echo")
        async def echo(i: int) -> None:
            await p.sio_b.emit("echoed", i)

        started = time.monotonic()
        for i in range(3):
            await p.mgr(A).server_side_emit("echo", i)
        await until(lambda: adapter(p.b).stats["received"] == 3)
        assert time.monotonic() - started < 0.5
        await until(lambda: len(events(p, A)) == 3, timeout=3)
        assert events(p, A) == [f'2["echoed",{i}]' for i in range(3)]


async def test_order_timeout_zero_never_waits_and_the_setting_is_validated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Pair() as p:
        mgr = p.mgr(A)
        mgr.order_timeout = 0.0
        p.net.down.add(B)
        await p.cut(A, B)
        started = time.monotonic()
        await p.sio_a.emit("n", 0)
        assert time.monotonic() - started < 0.05 and not mgr._channels[B].lagging
    with pytest.raises(ValueError):
        MeshManager(node(A)[0].node, order_timeout=-1)
    monkeypatch.setenv("SIOMESH_ADAPTER_ORDER_TIMEOUT", "0.25")
    mesh, _ = node(A)
    assert adapter(mesh).order_timeout == 0.25


# -- cluster calls that do not all come back ---------------------------------------------------


async def test_cluster_call_to_a_silent_peer_is_partial() -> None:
    async with Pair() as p:

        async def hang(body: bytes, sender: str) -> bytes:
            await asyncio.sleep(10)
            return b"{}"

        adapter(p.b)._inbound.handle_call = hang  # type: ignore[method-assign]
        started = time.monotonic()
        with pytest.raises(PartialResult) as info:
            await adapter(p.a).server_side_emit("x", with_ack=True, timeout=0.1)
        assert time.monotonic() - started < 1
        assert str(info.value) == "timeout reached: missing 1 responses"
        assert info.value.responses == [] and info.value.missing == [B]
        assert isinstance(info.value, TimeoutError)


async def test_cluster_call_to_an_unreachable_peer_is_partial_at_once() -> None:
    async with Pair() as p:
        await p.cut(A, B)
        started = time.monotonic()
        with pytest.raises(PartialResult) as info:
            await adapter(p.a).all_rooms(timeout=2)
        assert time.monotonic() - started < 1
        assert info.value.responses == set() and info.value.missing == [B]


async def test_partial_result_keeps_the_answers_that_came() -> None:
    async with Cluster(A, B, C) as c:
        await connected(c.sios[B], "eioB1")
        await connected(c.sios[C], "eioC1")

        async def hang(body: bytes, sender: str) -> bytes:
            await asyncio.sleep(10)
            return b"{}"

        c.mgr(C)._inbound.handle_call = hang  # type: ignore[method-assign]
        c.mgr(B).on_server_event("who", lambda: "B")
        with pytest.raises(PartialResult) as info:
            await c.mgr(A).server_side_emit("who", with_ack=True, timeout=0.2)
        assert info.value.responses == ["B"] and info.value.missing == [C]
        with pytest.raises(PartialResult) as sockets:
            await c.mgr(A).fetch_sockets(timeout=0.2)
        assert [(s.owner, s.namespace) for s in sockets.value.responses] == [(B, "/")]


async def test_a_failing_handler_is_a_missing_answer() -> None:
    async with Pair() as p:

        def boom() -> None:
            raise ValueError("handler bug")

        adapter(p.b).on_server_event("boom", boom)
        with pytest.raises(PartialResult) as info:
            await adapter(p.a).server_side_emit("boom", with_ack=True, timeout=1)
        assert info.value.missing == [B]
        assert adapter(p.b).stats["bad_messages"] == 1


# -- what a peer may send ----------------------------------------------------------------------


async def test_bad_adapter_messages_are_counted_acked_and_skipped() -> None:
    async with Pair() as p:
        await connected(p.sio_b, "eioB1")
        epoch = p.a.generation
        for seq, body in enumerate(
            [b"garbage", b"[1,2]", json.dumps({"m": "nope", "ns": "/"}).encode(), b'{"m":"emit"}'],
            start=1,
        ):
            assert p.a.links.post(B, "data", FrameType.ADAPTER, encode_u64_pair(epoch, seq, body))
        acks: list[bytes] = []
        p.a.links.dispatcher.on(FrameType.ADAPTER_ACK, lambda link, payload: acks.append(payload))
        await until(lambda: acks and acks[-1] == encode_u64_pair(epoch, 4))
        assert adapter(p.b).stats["bad_messages"] == 4
        assert p.data_link(A, B).is_open  # the link stays up
        # and the next genuine message still goes through
        p.a.links.post(
            B,
            "data",
            FrameType.ADAPTER,
            encode_u64_pair(
                epoch, 5, json.dumps({"m": "emit", "ns": "/", "event": "ok", "args": []}).encode()
            ),
        )
        await until(lambda: p.sent[B])
        assert p.sent[B] == [("eioB1", '2["ok"]')]


async def test_a_truncated_adapter_frame_is_a_protocol_error() -> None:
    async with Pair() as p:
        assert p.a.links.post(B, "data", FrameType.ADAPTER, b"short")
        await until(lambda: p.b.stats["link_protocol_errors"] == 1)
        await until(lambda: p.a.links.current(B, "data") is None)


async def test_a_bad_call_is_answered_with_an_error() -> None:
    async with Pair() as p:
        link = await asyncio.wait_for(p.a.links.get(B, "control"), T)
        for body in (b"not json", b"[]", b'{"op":"steal","ns":"/"}', b'{"op":"all_rooms"}'):
            stream = link.open_stream()
            stream.send(FrameType.CALL, encode_call("adapter", body))
            kind, payload = await stream.next(T)
            stream.close()
            assert kind is FrameType.REPLY and payload[:1] == b"\x01", body
        assert adapter(p.b).stats["bad_messages"] == 4
        assert link.is_open


async def test_old_http_adapter_endpoints_are_gone() -> None:
    mesh, _ = node(A)
    read = False

    async def receive() -> dict[str, Any]:
        nonlocal read
        read = True
        return {"type": "http.request", "body": b"x", "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for path in ("/_siomesh/adapter", "/_siomesh/adapter-call"):
        scope: dict[str, Any] = {
            "type": "http",
            "method": "POST",
            "path": path,
            "query_string": b"",
            "headers": [],
        }
        await mesh(scope, receive, send)
        assert sent[-2]["status"] == 404
    assert not read
    await mesh.shutdown()
