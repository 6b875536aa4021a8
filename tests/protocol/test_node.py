"""Node as plain function calls: join, probe failure, refutation, leave, push."""

from __future__ import annotations

import random

from siomesh.protocol.directory import engineio_key
from siomesh.protocol.membership import GossipConfig
from siomesh.protocol.messages import Ack, Ping, PingReq, Push, State, Syn, SynAck
from siomesh.protocol.node import Node, Outbound

CFG = GossipConfig()


def make(i: str, seeds: list[str] | None = None) -> Node:
    return Node(i, f"http://{i}", 1, CFG, random.Random(i), seeds or [])


def deliver(nodes: dict[str, Node], src: str, outs: list[Outbound], now: float) -> None:
    """Deliver messages breadth-first until quiet (no loss, zero latency)."""
    queue = [(src, dst, msg) for dst, msg in outs]
    while queue:
        s, d, m = queue.pop(0)
        node = nodes.get(d)
        if node is not None:
            queue += [(d, d2, m2) for d2, m2 in node.receive(s, m, now)]


def test_join_through_seed_learns_members_and_directory() -> None:
    a, b = make("a"), make("b", ["http://a"])
    a.add_local(engineio_key("s1"))
    nodes = {"http://a": a, "http://b": b}
    outs = b.tick(0.0)
    assert outs == [("http://a", outs[0][1])] and isinstance(outs[0][1], Syn)
    deliver(nodes, "http://b", outs, 0.0)
    assert b.joined
    assert {m.node_id for m in a.live_members()} == {"a", "b"}
    assert {m.node_id for m in b.live_members()} == {"a", "b"}
    assert b.directory.owner_of_engineio_sid("s1") == "a"
    assert b.member_by_url("http://a") is not None


def test_unanswered_probe_leads_to_suspect_then_dead() -> None:
    a = make("a")
    a.receive("http://b", Syn("b", (make("b").me().update(),), ()), 0.0)
    t, sent_ping, sent_req = 0.0, False, False
    while t < 30 and a.member("b").state == State.ALIVE:  # type: ignore[union-attr]
        t = a.next_tick_at()
        for _dst, msg in a.tick(t):
            sent_ping |= isinstance(msg, Ping)
            sent_req |= isinstance(msg, PingReq)
    assert sent_ping and a.member("b").state == State.SUSPECT  # type: ignore[union-attr]
    while t < 60 and a.member("b").state == State.SUSPECT:  # type: ignore[union-attr]
        t = a.next_tick_at()
        a.tick(t)
    assert a.member("b").state == State.DEAD  # type: ignore[union-attr]
    assert not sent_req  # no other member to ask


def test_ping_is_acked_and_suspicion_refuted() -> None:
    a = make("a")
    me = a.me()
    suspect = me.update().__class__(me.node_id, me.url, 1, 0, State.SUSPECT, "b")
    outs = a.receive("http://b", Ping("b", 42, (suspect,)), 1.0)
    assert len(outs) == 1 and outs[0][0] == "http://b"
    ack = outs[0][1]
    assert isinstance(ack, Ack) and ack.seq == 42
    assert any(
        u.node_id == "a" and u.incarnation == 1 and u.state == State.ALIVE for u in ack.updates
    )


def test_local_entries_are_pushed_and_leave_is_announced() -> None:
    a, b = make("a"), make("b", ["http://a"])
    nodes = {"http://a": a, "http://b": b}
    deliver(nodes, "http://b", b.tick(0.0), 0.0)
    a.tick(0.0)
    a.add_local(engineio_key("fresh"))
    t = 0.0
    pushes: list[Outbound] = []
    while not pushes:
        t = a.next_tick_at()
        pushes = [o for o in a.tick(t) if isinstance(o[1], Push) and o[1].deltas]
    deliver(nodes, "http://a", pushes, t)
    assert b.directory.owner_of_engineio_sid("fresh") == "a"
    a.remove_local(engineio_key("fresh"))
    outs = a.leave(t + 1)
    assert [dst for dst, _ in outs] == ["http://b"]
    deliver(nodes, "http://a", outs, t + 1)
    assert b.member("a").state == State.LEFT  # type: ignore[union-attr]
    assert b.directory.owner_of_engineio_sid("fresh") is None
    assert a.tick(t + 2) == []


def test_synack_carries_delta_for_syn_sender() -> None:
    a, b = make("a"), make("b")
    a.add_local(engineio_key("x"))
    syn = b.tick(0.0)  # no seeds: nothing yet
    assert all(not isinstance(m, Syn) for _d, m in syn)
    reply = a.receive("http://b", Syn("b", (b.me().update(),), b.directory.digest_items()), 0.0)
    assert isinstance(reply[0][1], SynAck) and reply[0][1].deltas
