"""One gossip node as a pure state machine: messages and time in, messages out.

The caller (the asyncio runtime, or :class:`siomesh.testing.Simulator`) owns the clock, the
transport and the randomness. Its whole job:

* call :meth:`Node.receive` for every decoded message that arrives, with the sender's
  advertised URL (authenticated by the transport) and the current time;
* call :meth:`Node.tick` no later than :meth:`Node.next_tick_at` (calling it earlier or more
  often is harmless);
* send every returned :data:`Outbound` ``(target_url, message)``; delivery is best effort --
  the protocol tolerates loss, duplication and reordering, so a failed send is simply dropped;
* call :meth:`Node.leave` on graceful shutdown and send what it returns.

``now`` must never go backwards. ``rng`` is any object with ``random()``, ``sample()``,
``shuffle()`` and ``choice()`` (a ``random.Random``); all randomness comes from it, so a seeded
rng replays a run exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

from siomesh.counters import Stats
from siomesh.protocol.directory import Directory, delta_wire_size
from siomesh.protocol.membership import GossipConfig, Member, Membership
from siomesh.protocol.messages import (
    Ack,
    Ack2,
    MemberUpdate,
    Message,
    OriginDelta,
    Ping,
    PingReq,
    Push,
    State,
    Syn,
    SynAck,
    encode,
)

__all__ = ["Node", "Outbound", "Rng"]

Outbound: TypeAlias = tuple[str, Message]
_T = TypeVar("_T")

_UPDATE_BYTES = 160  # generous size of one piggybacked MemberUpdate, for budgeting
_SLACK = 256


class Rng(Protocol):
    """The randomness a node needs (``random.Random`` satisfies it)."""

    def random(self) -> float: ...
    def sample(self, population: Sequence[Any], k: int) -> list[Any]: ...
    def shuffle(self, x: list[Any]) -> None: ...
    def choice(self, seq: Sequence[Any]) -> Any: ...


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    started: float
    indirect_sent: bool = False
    acked: bool = False
    #: acked by the target itself, not relayed by a helper
    direct: bool = False


class _Broadcasts:
    """Piggyback queue: each update rides on up to ``limit`` messages, least-sent first.

    A newer claim about a node replaces the queued ones; SUSPECT claims are kept per suspecter
    because Lifeguard counts independent suspicions.
    """

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], list[Any]] = {}  # key -> [update, times sent]

    def __len__(self) -> int:
        return len(self._items)

    def add(self, u: MemberUpdate) -> None:
        if u.state != State.SUSPECT:
            for key in [k for k in self._items if k[0] == u.node_id]:
                del self._items[key]
        self._items[(u.node_id, u.by if u.state == State.SUSPECT else "")] = [u, 0]

    def take(self, n: int, limit: int) -> tuple[MemberUpdate, ...]:
        if not self._items:
            return ()
        chosen = sorted(self._items.items(), key=lambda kv: kv[1][1])[:n]
        for key, item in chosen:
            item[1] += 1
            if item[1] >= limit:
                del self._items[key]
        return tuple(item[0] for _k, item in chosen)


class Node:
    """SWIM membership + Scuttlebutt directory for one process (see module docstring).

    ``generation`` must grow with every process start under the same ``node_id`` (a start
    timestamp in ns works); ``seeds`` are peer URLs to join through (their ids are learned from
    their answers; our own URL is ignored).
    """

    def __init__(
        self,
        node_id: str,
        url: str,
        generation: int,
        config: GossipConfig,
        rng: Rng,
        seeds: Iterable[str] = (),
    ) -> None:
        self.config = config
        self._rng = rng
        me = Member(node_id, url, generation, 0, State.ALIVE, 0.0)
        self._membership = Membership(me, config)
        self._directory = Directory(node_id, generation, config.tombstone_ttl)
        self._seeds = [s for s in dict.fromkeys(seeds) if s != url]
        self._joined = not self._seeds
        self._now = 0.0
        self._started = False
        self._seq = 0
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._health = 0  # Lifeguard local health score (see GossipConfig.max_local_health)
        self._relays: dict[int, tuple[str, int, float]] = {}  # our seq -> (url, their seq, exp)
        self._broadcasts = _Broadcasts()
        self._pushed = 0  # own directory versions already pushed eagerly
        self._relay_queue: list[list[Any]] = []  # [delta, gossip rounds left]
        self._gap_sync_at: dict[str, float] = {}
        self._next_probe = self._next_gossip = self._next_ae = self._next_gc = 0.0
        self._left = False
        #: node ids whose last answered probe was acked only through a helper
        self._indirect: set[str] = set()

    # ------------------------------------------------------------------ queries

    @property
    def node_id(self) -> str:
        return self._membership.me.node_id

    @property
    def url(self) -> str:
        return self._membership.me.url

    @property
    def generation(self) -> int:
        return self._membership.me.generation

    @property
    def directory(self) -> Directory:
        """The replicated directory (read it freely; write only via add/remove_local)."""
        return self._directory

    @property
    def joined(self) -> bool:
        """True once a peer answered (always true for a node without seeds)."""
        return self._joined

    def me(self) -> Member:
        return self._membership.me

    def note_lag(self, lag: float) -> None:
        """The caller's event loop ran ``lag`` seconds late: a local sign of starvation, which
        raises the local health score (Lifeguard) before a probe fails because of it."""
        if lag >= self.config.probe_timeout / 2:
            self._health = min(self.config.max_local_health, self._health + 1)

    def membership_counts(self) -> Stats:
        """Suspicions raised, suspicions of this node refuted (it was alive: a false
        suspicion), members declared dead, and the current local health score."""
        counts = self._membership.counts
        counts.set("local_health", self._health)
        return counts

    def members(self) -> list[Member]:
        """Every known member including self and DEAD/LEFT tombstones."""
        return self._membership.all()

    def live_members(self) -> list[Member]:
        """ALIVE and SUSPECT members, self included (unless we left)."""
        return [m for m in self._membership.all() if m.live]

    def member(self, node_id: str) -> Member | None:
        return self._membership.get(node_id)

    def reached_indirectly(self) -> list[str]:
        """URLs of live peers that this node's last answered probe reached only through a
        helper (SWIM's indirect probe): alive, but this node cannot reach them directly (a
        partition between the two, a one-way firewall rule). A direct Ack clears it."""
        out = []
        for node_id in self._indirect:
            m = self._membership.get(node_id)
            if m is not None and m.live:
                out.append(m.url)
        return out

    def member_by_url(self, url: str) -> Member | None:
        return self._membership.by_url(url)

    def next_tick_at(self) -> float:
        """Latest time at which :meth:`tick` must run next."""
        if not self._started:
            return self._now
        times = [self._next_probe, self._next_gossip, self._next_ae, self._next_gc]
        p = self._probe
        if p is not None and not p.acked and not p.indirect_sent:
            times.append(p.started + self.config.probe_timeout * (1 + self._health))
        d = self._membership.next_deadline()
        if d is not None:
            times.append(d)
        return min(times)

    def add_seeds(self, seeds: Iterable[str]) -> None:
        """Learn more seed URLs (e.g. a DNS name re-resolved by the runtime); own URL ignored."""
        for seed in seeds:
            if seed != self.url and seed not in self._seeds:
                self._seeds.append(seed)

    # ------------------------------------------------------------------ local directory

    def add_local(self, key: str, value: str = "") -> None:
        """Publish ``key`` (see directory key helpers) as owned by this node."""
        self._directory.set(key, value)

    def remove_local(self, key: str) -> None:
        """Withdraw ``key``; peers learn a tombstone (kept ``tombstone_ttl``)."""
        self._directory.delete(key, self._now)

    # ------------------------------------------------------------------ inputs

    def receive(self, sender_url: str, msg: Message, now: float) -> list[Outbound]:
        """Handle one message from ``sender_url``; return what to send."""
        self._now = max(self._now, now)
        if self._left or msg.sender == self.node_id:
            return []
        self._joined = True
        out: list[Outbound] = []
        if isinstance(msg, Ping):
            self._merge(msg.updates, now)
            out.append((sender_url, Ack(self.node_id, msg.seq, self._piggy())))
        elif isinstance(msg, Ack):
            self._merge(msg.updates, now)
            p = self._probe
            if p is not None and p.seq == msg.seq:
                if not p.acked:
                    self._health = max(0, self._health - 1)
                p.acked = True
                if msg.sender == p.target:
                    p.direct = True
                    self._indirect.discard(p.target)
            elif msg.seq in self._relays:
                url, seq, _exp = self._relays.pop(msg.seq)
                out.append((url, Ack(self.node_id, seq, self._piggy())))
        elif isinstance(msg, PingReq):
            self._merge(msg.updates, now)
            seq = self._next_seq()
            self._relays[seq] = (sender_url, msg.seq, now + self.config.probe_interval)
            out.append((msg.target_url, Ping(self.node_id, seq, self._piggy())))
        elif isinstance(msg, Push):
            self._merge(msg.updates, now)
            if self._has_gap(msg.deltas, sender_url, now):
                out.append((sender_url, self._syn()))
            self._apply(msg.deltas, now, relay=True)
        elif isinstance(msg, Syn):
            self._merge(msg.members, now)
            out.append((sender_url, self._synack(msg)))
        elif isinstance(msg, SynAck):
            self._merge(msg.members, now)
            self._apply(msg.deltas, now, relay=False)
            peer = {o: (g, w, f) for o, g, w, f in msg.digest}
            deltas = self._directory.delta(peer, self._delta_budget(0))
            if deltas:
                out.append((sender_url, Ack2(self.node_id, tuple(deltas), self._piggy())))
        else:
            self._merge(msg.updates, now)
            self._apply(msg.deltas, now, relay=False)
        return out

    def tick(self, now: float) -> list[Outbound]:
        """Run every timer that is due at ``now``; return what to send."""
        self._now = max(self._now, now)
        if self._left:
            return []
        out: list[Outbound] = []
        if not self._started:
            self._start(now)
        for u in self._membership.expire(now):
            self._effects(u, now)
            self._broadcasts.add(u)
        self._probe_tick(now, out)
        if now >= self._next_gossip:
            self._next_gossip = now + self.config.gossip_interval
            self._gossip(out)
        if now >= self._next_ae:
            self._anti_entropy(now, out)
        if now >= self._next_gc:
            self._next_gc = now + 1.0
            self._directory.gc(now)
            self._relays = {s: r for s, r in self._relays.items() if r[2] > now}
            self._gap_sync_at = {u: t for u, t in self._gap_sync_at.items() if t > now - 1.0}
        return out

    def leave(self, now: float) -> list[Outbound]:
        """Announce a graceful leave to every live peer; the node is inert afterwards."""
        self._now = max(self._now, now)
        u = self._membership.leave(now)
        self._left = True
        msg = Push(self.node_id, (), (u,))
        return [(m.url, msg) for m in self._membership.live_peers()]

    # ------------------------------------------------------------------ timers

    def _start(self, now: float) -> None:
        # Random phases so that a cluster started at once does not probe in lockstep.
        c, r = self.config, self._rng.random
        self._started = True
        self._next_probe = now + r() * c.probe_interval
        self._next_gossip = now + r() * c.gossip_interval
        self._next_ae = now if not self._joined else now + r() * c.anti_entropy_interval
        self._next_gc = now + 1.0

    def _probe_tick(self, now: float, out: list[Outbound]) -> None:
        c = self.config
        p = self._probe
        if (
            p is not None
            and not p.acked
            and not p.indirect_sent
            and now >= p.started + c.probe_timeout * (1 + self._health)
        ):
            p.indirect_sent = True
            target = self._membership.get(p.target)
            helpers = [m for m in self._membership.live_peers() if m.node_id != p.target]
            if target is not None and helpers:
                for h in self._sample(helpers, c.indirect_checks):
                    req = PingReq(self.node_id, p.seq, target.node_id, target.url, self._piggy())
                    out.append((h.url, req))
        if now < self._next_probe:
            return
        self._next_probe = now + c.probe_interval * (1 + self._health)
        if p is not None and p.acked and not p.direct:
            self._indirect.add(p.target)
        if p is not None and not p.acked:
            self._health = min(c.max_local_health, self._health + 1)
            u = self._membership.suspect(p.target, now)
            if u is not None:
                self._broadcasts.add(u)
                target = self._membership.get(p.target)
                if target is not None:  # tell it directly so it can refute at once
                    out.append((target.url, Push(self.node_id, (), (u,))))
        self._probe = None
        target = self._next_target()
        if target is not None:
            seq = self._next_seq()
            self._probe = _Probe(target.node_id, seq, now)
            out.append((target.url, Ping(self.node_id, seq, self._piggy())))

    def _next_target(self) -> Member | None:
        # Round robin over a shuffled list (SWIM's bounded detection time), reshuffled per lap.
        for _ in range(2):
            while self._probe_order:
                m = self._membership.get(self._probe_order.pop())
                if m is not None and m.live and m.node_id != self.node_id:
                    return m
            self._probe_order = [m.node_id for m in self._membership.live_peers()]
            self._rng.shuffle(self._probe_order)
        return None

    def _gossip(self, out: list[Outbound]) -> None:
        d = self._directory
        top = d.max_version(self.node_id)
        if top > self._pushed:
            own = d.delta_range(self.node_id, self._pushed, top, self._delta_budget(0))
            if own is not None:
                self._pushed = own.to_version
                self._relay_queue.append([own, self.config.push_rounds])
        budget = full = self._delta_budget(self.config.max_piggyback)
        deltas: list[OriginDelta] = []
        keep: list[list[Any]] = []
        for item in self._relay_queue:
            size = delta_wire_size(item[0])
            if size > budget:
                if size <= full:
                    keep.append(item)  # next tick
                continue  # else it can never fit: anti-entropy will carry it
            budget -= size
            deltas.append(item[0])
            item[1] -= 1
            if item[1] > 0:
                keep.append(item)
        self._relay_queue = keep
        peers = self._membership.live_peers()
        if not peers or (not deltas and not len(self._broadcasts)):
            return
        for m in self._sample(peers, self.config.gossip_fanout):
            out.append((m.url, Push(self.node_id, tuple(deltas), self._piggy())))

    def _anti_entropy(self, now: float, out: list[Outbound]) -> None:
        c = self.config
        if not self._joined:
            # Still joining: knock on every seed, faster than the anti-entropy period.
            self._next_ae = now + c.probe_interval
            syn = self._syn()
            out.extend((s, syn) for s in self._seeds)
            return
        self._next_ae = now + c.anti_entropy_interval
        peers = self._membership.live_peers()
        others = [m.url for m in self._membership.all() if not m.live and m.url != self.url]
        others += [s for s in self._seeds if self._membership.by_url(s) is None]
        if others and (not peers or self._rng.random() < c.dead_sync_probability):
            target = str(self._rng.choice(others))
        elif peers:
            target = self._rng.choice(peers).url
        else:
            return
        out.append((target, self._syn()))

    # ------------------------------------------------------------------ helpers

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _sample(self, items: list[_T], k: int) -> list[_T]:
        return items if len(items) <= k else list(self._rng.sample(items, k))

    def _piggy(self) -> tuple[MemberUpdate, ...]:
        limit = self.config.retransmit_limit(self._membership.live_count())
        return self._broadcasts.take(self.config.max_piggyback, limit)

    def _delta_budget(self, n_updates: int) -> int:
        return self.config.max_message_bytes - _SLACK - n_updates * _UPDATE_BYTES

    def _syn(self) -> Syn:
        members = tuple(m.update() for m in self._membership.all())
        return Syn(self.node_id, members, self._directory.digest_items())

    def _synack(self, syn: Syn) -> SynAck:
        members = tuple(m.update() for m in self._membership.all())
        digest = self._directory.digest_items()
        head = len(encode(SynAck(self.node_id, members, digest, ())))
        peer = {o: (g, w, f) for o, g, w, f in syn.digest}
        deltas = self._directory.delta(peer, self.config.max_message_bytes - head - _SLACK)
        return SynAck(self.node_id, members, digest, tuple(deltas))

    def _merge(self, updates: Iterable[MemberUpdate], now: float) -> None:
        for u in updates:
            refuted = self._membership.counts["refuted"]
            out = self._membership.apply(u, now)
            if self._membership.counts["refuted"] != refuted:
                # peers suspected this node: it is probably the slow one (Lifeguard)
                self._health = min(self.config.max_local_health, self._health + 1)
            if out is not None:
                self._broadcasts.add(out)
                self._effects(out, now)

    def _effects(self, u: MemberUpdate, now: float) -> None:
        """Keep the directory in step with membership: dead or restarted origins go at once."""
        if u.node_id == self.node_id:
            return
        m = self._membership.get(u.node_id)
        if m is None:
            return
        if not m.live:
            self._directory.drop_origin(m.node_id, m.generation, now)
        else:
            g = self._directory.generation_of(m.node_id)
            if g is not None and g < m.generation:
                self._directory.drop_origin(m.node_id, m.generation - 1, now)
            self._directory.revive_origin(m.node_id, m.generation)

    def _has_gap(self, deltas: Iterable[OriginDelta], sender_url: str, now: float) -> bool:
        """A push that starts above our watermark means we missed one: pull now (rate-limited)."""
        d = self._directory
        gap = any(
            x.generation == d.generation_of(x.origin) and x.from_version > d.max_version(x.origin)
            for x in deltas
        )
        last = self._gap_sync_at.get(sender_url, -1e9)
        if not gap or now - last < 4 * self.config.gossip_interval:
            return False
        self._gap_sync_at[sender_url] = now
        return True

    def _apply(self, deltas: Iterable[OriginDelta], now: float, relay: bool) -> None:
        live = self._membership
        accepted = []
        for x in deltas:
            m = live.get(x.origin)
            if m is not None and not m.live and m.generation >= x.generation:
                continue  # a dead origin's entries must not come back through a lagging peer
            accepted.append(x)
        learned = self._directory.apply(accepted, now)
        if relay:
            # Relay only what was news to us, for push_rounds rounds: bounded epidemic.
            rounds = self.config.push_rounds
            self._relay_queue.extend([x, rounds] for x in learned if not x.reset)
