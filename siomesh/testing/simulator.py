"""Deterministic discrete-event simulation of a siomesh gossip cluster.

Each simulated node is a real :class:`siomesh.protocol.Node`; messages cross a
:class:`FakeNetwork` (latency, loss, partitions, real codec); time is virtual, so minutes of
cluster life take a second of CPU, and the same ``seed`` replays the same run exactly.

Example::

    sim = Simulator(10, seed=1)
    assert sim.run_until(sim.membership_converged, max_time=10) is not None
    sim.crash("n3")
    sim.run_until(lambda: sim.all_see_dead("n3"), max_time=20)
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from siomesh.protocol.directory import engineio_key
from siomesh.protocol.membership import GossipConfig
from siomesh.protocol.messages import Message, State
from siomesh.protocol.node import Node, Outbound
from siomesh.testing.clock import FakeClock
from siomesh.testing.network import FakeNetwork

__all__ = ["SimNode", "Simulator"]

_TICK, _DELIVER, _CALL = 0, 1, 2


@dataclass(slots=True)
class SimNode:
    """A running node and its scheduling state."""

    node: Node
    tick_at: float = float("inf")
    token: int = 0
    sids: list[str] = field(default_factory=list)


class Simulator:
    """Drives ``n_nodes`` nodes (ids ``n0..``, URLs ``sim://n0..``) on virtual time.

    Nodes join through one seed (``n0``, or the seed given to :meth:`add_node`). Events are a
    heap ordered by (time, sequence number), so ties resolve deterministically.
    """

    def __init__(
        self,
        n_nodes: int = 0,
        seed: int = 0,
        config: GossipConfig | None = None,
        *,
        latency: float = 0.001,
        jitter: float = 0.001,
        loss: float = 0.0,
    ) -> None:
        self.config = config or GossipConfig.lan()
        self.clock = FakeClock()
        self.rng = random.Random(seed)
        self.network = FakeNetwork(
            random.Random(self.rng.getrandbits(64)),
            latency,
            jitter,
            loss,
            self.config.max_message_bytes,
        )
        self.running: dict[str, SimNode] = {}
        self.generations: dict[str, int] = {}
        self.sid_created: dict[str, tuple[str, float]] = {}  # sid -> (owner, created at)
        self.gone_sids: set[str] = set()  # sids of crashed or restarted processes
        self._queue: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._next_id = 0
        for _ in range(n_nodes):
            self.add_node()

    # ------------------------------------------------------------------ properties

    @property
    def now(self) -> float:
        return self.clock.now()

    def node(self, node_id: str) -> Node:
        return self.running[node_id].node

    def nodes(self) -> list[Node]:
        return [s.node for s in self.running.values()]

    @staticmethod
    def url_of(node_id: str) -> str:
        return f"sim://{node_id}"

    # ------------------------------------------------------------------ scenario helpers

    def add_node(self, seed: str | None = None, node_id: str | None = None) -> Node:
        """Start a node that joins through ``seed`` (a node id; default: the first node)."""
        if node_id is None:
            node_id = f"n{self._next_id}"
            self._next_id += 1
        if seed is None:
            seed = next(iter(self.running), None)
        seeds = [] if seed is None else [self.url_of(seed)]
        gen = self.generations.get(node_id, 0) + 1
        self.generations[node_id] = gen
        node = Node(
            node_id,
            self.url_of(node_id),
            gen,
            self.config,
            random.Random(self.rng.getrandbits(64)),
            seeds,
        )
        self.running[node_id] = SimNode(node)
        self._schedule_tick(node_id, self.now)
        return node

    def crash(self, node_id: str) -> None:
        """Stop ``node_id`` silently (messages to it vanish)."""
        self.gone_sids.update(self.running.pop(node_id).sids)

    def restart(self, node_id: str, seed: str | None = None) -> Node:
        """Crash (if running) and start ``node_id`` again under the same URL, new generation."""
        old = self.running.pop(node_id, None)
        if old is not None:
            self.gone_sids.update(old.sids)
        if seed is None:
            seed = next((i for i in self.running if i != node_id), None)
        return self.add_node(seed, node_id)

    def leave(self, node_id: str) -> None:
        """Graceful shutdown: the node announces LEFT, then stops."""
        sn = self.running.pop(node_id)
        self.gone_sids.update(sn.sids)
        self._send(sn.node.url, sn.node.leave(self.now))

    def partition(self, *groups: list[str]) -> None:
        """Split the cluster: each group is a list of node ids; the rest is one more group."""
        self.network.partition([[self.url_of(i) for i in g] for g in groups])

    def cut(self, a: str, b: str) -> None:
        """Nodes ``a`` and ``b`` (ids) stop reaching each other; both still reach the rest."""
        self.network.cut(self.url_of(a), self.url_of(b))

    def heal(self) -> None:
        self.network.heal()

    def set_loss(self, p: float) -> None:
        self.network.set_loss(p)

    def create_sid(self, node_id: str) -> str:
        """Register a new Engine.IO session on ``node_id``; return its sid."""
        sid = f"{node_id}.{self.rng.getrandbits(64):016x}"
        self.running[node_id].node.add_local(engineio_key(sid))
        self.running[node_id].sids.append(sid)
        self.sid_created[sid] = (node_id, self.now)
        return sid

    def at(self, t: float, fn: Callable[[], object]) -> None:
        """Run ``fn`` at virtual time ``t`` (scripted scenario step)."""
        self._push(max(t, self.now), _CALL, fn)

    # ------------------------------------------------------------------ running

    def run_for(self, seconds: float) -> None:
        self._run_to(self.now + seconds)

    def run_until(
        self, pred: Callable[[], bool], max_time: float, check_every: float = 0.05
    ) -> float | None:
        """Run until ``pred()`` holds (checked every ``check_every`` virtual seconds).

        Return the virtual time it took, or None if ``max_time`` passed first.
        """
        start = self.now
        while True:
            if pred():
                return self.now - start
            if self.now - start >= max_time:
                return None
            self._run_to(min(self.now + check_every, start + max_time))

    def _run_to(self, t: float) -> None:
        q = self._queue
        while q and q[0][0] <= t:
            when, _seq, kind, payload = heapq.heappop(q)
            self.clock.set(when)
            if kind == _TICK:
                node_id, token = payload
                sn = self.running.get(node_id)
                if sn is not None and sn.token == token:
                    sn.tick_at = float("inf")
                    self._send(sn.node.url, sn.node.tick(when))
                    self._schedule_tick(node_id, sn.node.next_tick_at())
            elif kind == _DELIVER:
                self._deliver(*payload)
            else:
                payload()
        self.clock.set(max(t, self.now))

    def _deliver(self, src: str, dst: str, msg: Message) -> None:
        sn = self.running.get(dst[len("sim://") :])
        if sn is None:
            return
        self._send(dst, sn.node.receive(src, msg, self.now))
        nxt = sn.node.next_tick_at()
        if nxt < sn.tick_at:
            self._schedule_tick(sn.node.node_id, nxt)

    def _send(self, src: str, outs: list[Outbound]) -> None:
        for dst, msg in outs:
            r = self.network.transmit(src, dst, msg)
            if r is not None:
                self._push(self.now + r[0], _DELIVER, (src, dst, r[1]))

    def _schedule_tick(self, node_id: str, t: float) -> None:
        sn = self.running[node_id]
        t = max(t, self.now)
        sn.token += 1
        sn.tick_at = t
        self._push(t, _TICK, (node_id, sn.token))

    def _push(self, t: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, kind, payload))

    # ------------------------------------------------------------------ invariants

    def _expected(self) -> set[tuple[str, int]]:
        return {(i, sn.node.generation) for i, sn in self.running.items()}

    def membership_converged(self) -> bool:
        """Every running node sees exactly the running nodes (id and generation) as ALIVE."""
        want = self._expected()
        for sn in self.running.values():
            got = {(m.node_id, m.generation) for m in sn.node.members() if m.state == State.ALIVE}
            if got != want:
                return False
        return True

    def membership_disagreements(self) -> dict[str, str]:
        """Per node, what its view lacks or adds (empty when converged), for assert messages."""
        want = self._expected()
        out = {}
        for i, sn in self.running.items():
            got = {(m.node_id, m.generation) for m in sn.node.members() if m.state == State.ALIVE}
            if got != want:
                out[i] = f"missing {sorted(want - got)} extra {sorted(got - want)}"
        return out

    def all_see_dead(self, node_id: str) -> bool:
        """Every running node holds ``node_id`` as DEAD/LEFT (or has already forgotten it)."""
        for sn in self.running.values():
            m = sn.node.member(node_id)
            if m is not None and m.live:
                return False
        return True

    def known_everywhere(self, sid: str) -> bool:
        owner = self.sid_created[sid][0]
        return all(
            sn.node.directory.owner_of_engineio_sid(sid) == owner for sn in self.running.values()
        )

    def owner_violations(self) -> list[str]:
        """Sids that some node's directory lists under two origins, or under a wrong origin."""
        bad = []
        for i, sn in self.running.items():
            d = sn.node.directory
            seen: dict[str, str] = {}
            for origin in d.origins():
                for e in d.items(origin):
                    if e.deleted or not e.key.startswith("e:"):
                        continue
                    sid = e.key[2:]
                    if sid in seen:
                        bad.append(f"{i}: {sid} owned by {seen[sid]} and {origin}")
                    seen[sid] = origin
                    created = self.sid_created.get(sid)
                    if created is not None and created[0] != origin:
                        bad.append(f"{i}: {sid} listed under {origin}, created on {created[0]}")
        return bad

    def stale_sids(self) -> list[str]:
        """Sids of crashed/restarted processes that some running node still lists live."""
        return [
            f"{sn.node.node_id}: {sid}"
            for sn in self.running.values()
            for sid in self.gone_sids
            if sn.node.directory.owner_of_engineio_sid(sid) is not None
        ]

    def directories_converged(self) -> bool:
        """Every running node holds the same live entries for every running origin."""
        nodes = self.nodes()
        if not nodes:
            return True
        for origin in self.running:
            ref = {e.key for e in nodes[0].directory.items(origin) if not e.deleted}
            for n in nodes[1:]:
                if {e.key for e in n.directory.items(origin) if not e.deleted} != ref:
                    return False
        return True
