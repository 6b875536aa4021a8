"""SWIM membership table: members, incarnations, suspicion (Lifeguard timeouts), tombstones.

This module holds *state and rules*; :mod:`siomesh.protocol.node` decides when to probe and
whom to tell. Nothing here reads a clock: every method that needs the time takes ``now``
(seconds, any monotonic origin).

Precedence (:func:`supersedes`), for two claims about the same node id:

1. a higher ``generation`` (a new process) always wins, whatever its state;
2. within a generation, a higher ``incarnation`` wins;
3. at equal incarnation, DEAD = LEFT > SUSPECT > ALIVE (a node refutes by raising its
   incarnation, never by repeating an old one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from siomesh.counters import Stats
from siomesh.protocol.messages import DEFAULT_MAX_MESSAGE_BYTES, MemberUpdate, State

__all__ = [
    "GossipConfig",
    "Member",
    "Membership",
    "State",
    "rank",
    "supersedes",
]


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timing and sizing of the gossip protocol. Times in seconds; N = live members.

    ``lan()`` (the default) is faster than memberlist's LAN preset (probe 1 s, gossip 200 ms,
    push-pull 30 s) because siomesh clusters are small and a missed owner costs a client
    reconnect. Derived quantities:

    * probe period per node: ``probe_interval``; a probe that gets no direct Ack by
      ``probe_timeout`` asks ``indirect_checks`` peers to probe; no Ack by the end of the
      period means SUSPECT.
    * suspicion timeout: starts at ``suspicion_mult * max(1, log10 N) * probe_interval`` and
      shrinks toward ``suspicion_min_mult * max(1, log10 N) * probe_interval`` as independent
      confirmations C arrive (Lifeguard): ``max(min, start - (start - min) * log(C + 1) /
      log(K + 1))`` with K = ``indirect_checks``. The first suspicion counts as C = 0.
    * expected detection bound: about ``2 * probe_interval + suspicion start + gossip spread``.
    * membership updates ride on up to ``retransmit_mult * ceil(log10(N + 1))`` messages each.
    * fresh directory entries are pushed to ``gossip_fanout`` random peers in each of
      ``push_rounds`` gossip rounds (every ``gossip_interval``), and every receiver relays what
      was new to it the same way. A node is missed with probability about
      ``exp(-fanout * push_rounds)`` (0.25 % at 3 x 2); spread takes about
      ``log_{fanout+1}(N)`` intervals, misses are repaired by anti-entropy or at once when the
      next push from that origin shows a version gap. Bytes: each entry crosses about
      ``N * fanout * push_rounds`` links.
    * anti-entropy (Syn / SynAck / Ack2) with one random peer every ``anti_entropy_interval``;
      with probability ``dead_sync_probability`` the peer is a dead member or a seed instead,
      so healed partitions merge back.
    * tombstones (dead members, deleted directory keys) are kept ``tombstone_ttl``.
    """

    probe_interval: float = 0.5
    probe_timeout: float = 0.2
    indirect_checks: int = 3
    suspicion_mult: float = 4.0
    suspicion_min_mult: float = 2.0
    retransmit_mult: int = 4
    gossip_interval: float = 0.05
    gossip_fanout: int = 3
    push_rounds: int = 2
    anti_entropy_interval: float = 2.0
    dead_sync_probability: float = 0.15
    tombstone_ttl: float = 60.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_piggyback: int = 16
    #: Lifeguard's local health awareness: each probe that fails, and each suspicion of this
    #: node it must refute, raises a local health score (a success lowers it); probe timeout
    #: and interval are multiplied by ``1 + score``, up to ``1 + max_local_health``. A node
    #: whose own event loop is starved (CPU, GC, a burst of clients) thus stops accusing its
    #: healthy peers of its own slowness. 0 disables it.
    max_local_health: int = 8

    def __post_init__(self) -> None:
        if not 0 < self.probe_timeout < self.probe_interval:
            raise ValueError("need 0 < probe_timeout < probe_interval")
        if self.gossip_interval <= 0 or self.anti_entropy_interval <= 0:
            raise ValueError("gossip_interval and anti_entropy_interval must be positive")
        if min(self.gossip_fanout, self.push_rounds, self.retransmit_mult) < 1:
            raise ValueError("gossip_fanout, push_rounds and retransmit_mult must be >= 1")
        if self.indirect_checks < 0:
            raise ValueError("indirect_checks must be >= 0")
        if not 0 < self.suspicion_min_mult <= self.suspicion_mult:
            raise ValueError("need 0 < suspicion_min_mult <= suspicion_mult")
        if self.max_local_health < 0:
            raise ValueError("max_local_health must be >= 0")
        if self.max_message_bytes < 2000:
            raise ValueError("max_message_bytes must be at least 2000")

    @classmethod
    def lan(cls) -> GossipConfig:
        """Default: one data centre. Detects a crash in ~3-5 s at N = 10."""
        return cls()

    @classmethod
    def local(cls) -> GossipConfig:
        """One machine or loopback (tests, ``--workers``): everything about 2.5x faster."""
        return cls(
            probe_interval=0.2,
            probe_timeout=0.05,
            indirect_checks=1,
            suspicion_mult=3.0,
            suspicion_min_mult=1.5,
            retransmit_mult=2,
            gossip_interval=0.02,
            anti_entropy_interval=1.0,
            tombstone_ttl=30.0,
        )

    def retransmit_limit(self, n: int) -> int:
        """How many messages carry one membership update, for ``n`` members."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def suspicion_bounds(self, n: int) -> tuple[float, float]:
        """(start, minimum) suspicion timeout for ``n`` live members."""
        scale = max(1.0, math.log10(max(n, 1))) * self.probe_interval
        return self.suspicion_mult * scale, self.suspicion_min_mult * scale

    def suspicion_timeout(self, n: int, confirmations: int) -> float:
        """Lifeguard timeout after ``confirmations`` independent suspicions beyond the first."""
        start, low = self.suspicion_bounds(n)
        k = max(1, self.indirect_checks)
        frac = math.log(confirmations + 1) / math.log(k + 1)
        return max(low, start - (start - low) * frac)


@dataclass(frozen=True, slots=True)
class Member:
    """One node as seen locally. ``state_since`` is the local time of the last state change."""

    node_id: str
    url: str
    generation: int
    incarnation: int
    state: State
    state_since: float

    def update(self, by: str = "") -> MemberUpdate:
        """The wire form of this member's current claim."""
        return MemberUpdate(
            self.node_id, self.url, self.generation, self.incarnation, self.state, by
        )

    @property
    def live(self) -> bool:
        """ALIVE or SUSPECT: still addressed by routing and gossip."""
        return self.state < State.DEAD  # ALIVE=0, SUSPECT=1; int compare is the hot path


def rank(state: State) -> int:
    """Precedence of a state at equal generation and incarnation."""
    return 2 if state in (State.DEAD, State.LEFT) else int(state)


def supersedes(new: MemberUpdate, old: Member) -> bool:
    """True when claim ``new`` replaces what we know (``old``) about the same node id."""
    if new.generation != old.generation:
        return new.generation > old.generation
    if new.incarnation != old.incarnation:
        return new.incarnation > old.incarnation
    return rank(new.state) > rank(old.state)


@dataclass(slots=True)
class _Suspicion:
    incarnation: int
    started: float
    confirmations: set[str] = field(default_factory=set)


class Membership:
    """The member table of one node, including itself.

    Contract: :meth:`apply` is the only way remote claims enter; it returns the update to
    gossip onward (the accepted claim, or our own refutation) or ``None`` when the claim told
    us nothing new. :meth:`expire` must be called regularly (every tick); it turns timed-out
    suspicions into DEAD and forgets old tombstones.
    """

    def __init__(self, me: Member, config: GossipConfig) -> None:
        self.config = config
        self._me_id = me.node_id
        self._members: dict[str, Member] = {me.node_id: me}
        self._suspicions: dict[str, _Suspicion] = {}
        self._live_count = 1
        self._peers_cache: list[Member] | None = None
        self._next_forget = 0.0
        #: how often this node suspected a peer, had to refute a suspicion of itself (a false
        #: suspicion: it was alive), and declared a peer dead
        #: suspicions raised and refuted, members declared dead (siomesh.counters)
        self.counts = Stats("membership")

    # ------------------------------------------------------------------ queries

    @property
    def me(self) -> Member:
        return self._members[self._me_id]

    def get(self, node_id: str) -> Member | None:
        return self._members.get(node_id)

    def all(self) -> list[Member]:
        """Every known member, tombstones included, self included."""
        return list(self._members.values())

    def live_peers(self) -> list[Member]:
        """ALIVE and SUSPECT members other than self (a shared list: do not mutate)."""
        if self._peers_cache is None:
            me = self._me_id
            self._peers_cache = [m for m in self._members.values() if m.live and m.node_id != me]
        return self._peers_cache

    def live_count(self) -> int:
        """N in the config formulas: live members including self."""
        return self._live_count

    def by_url(self, url: str) -> Member | None:
        """The newest-generation member advertising ``url`` (live ones preferred)."""
        best: Member | None = None
        for m in self._members.values():
            if m.url != url:
                continue
            if best is None or (m.live, m.generation) > (best.live, best.generation):
                best = m
        return best

    def suspicion_deadline(self, node_id: str) -> float | None:
        s = self._suspicions.get(node_id)
        if s is None:
            return None
        n = self._live_count
        return s.started + self.config.suspicion_timeout(n, len(s.confirmations) - 1)

    def next_deadline(self) -> float | None:
        """Earliest time at which :meth:`expire` has suspicion work to do."""
        times = [self.suspicion_deadline(i) for i in self._suspicions]
        return min((t for t in times if t is not None), default=None)

    # ------------------------------------------------------------------ changes

    def _set(self, m: Member) -> None:
        old = self._members.get(m.node_id)
        self._live_count += int(m.live) - int(old is not None and old.live)
        self._members[m.node_id] = m
        self._peers_cache = None
        if m.state != State.SUSPECT:
            self._suspicions.pop(m.node_id, None)

    def apply(self, u: MemberUpdate, now: float) -> MemberUpdate | None:
        """Merge a remote claim; return what to gossip onward, or ``None``."""
        if u.node_id == self._me_id:
            return self._about_me(u)
        old = self._members.get(u.node_id)
        if old is None:
            if u.state in (State.DEAD, State.LEFT):
                # Keep the tombstone anyway: it stops stale ALIVE gossip resurrecting the node.
                self._set(Member(u.node_id, u.url, u.generation, u.incarnation, u.state, now))
                return u
            self._set(Member(u.node_id, u.url, u.generation, u.incarnation, u.state, now))
            if u.state == State.SUSPECT:
                self._suspicions[u.node_id] = _Suspicion(u.incarnation, now, {u.by})
            return u
        if not supersedes(u, old):
            return self._confirm(u, old)
        self._set(Member(u.node_id, u.url, u.generation, u.incarnation, u.state, now))
        if u.state == State.SUSPECT:
            self._suspicions[u.node_id] = _Suspicion(u.incarnation, now, {u.by})
        return u

    def _confirm(self, u: MemberUpdate, old: Member) -> MemberUpdate | None:
        """An equal SUSPECT claim from a new suspecter shortens the timeout (Lifeguard)."""
        if u.state != State.SUSPECT or old.state != State.SUSPECT:
            return None
        if (u.generation, u.incarnation) != (old.generation, old.incarnation):
            return None
        s = self._suspicions.get(u.node_id)
        if s is None or u.by in s.confirmations:
            return None
        s.confirmations.add(u.by)
        # Re-gossip only the first K confirmations; later ones cannot shorten the timeout.
        return u if len(s.confirmations) <= self.config.indirect_checks + 1 else None

    def _about_me(self, u: MemberUpdate) -> MemberUpdate | None:
        me = self.me
        if u.generation != me.generation or me.state == State.LEFT:
            return None  # about another process with our id, or we are leaving anyway
        if u.state == State.ALIVE or u.incarnation < me.incarnation:
            return None
        # Refute: a claim that we are suspect/dead/left at our incarnation or above.
        self.counts.bump("refuted")
        self._set(replace(me, incarnation=u.incarnation + 1))
        return self.me.update()

    def suspect(self, node_id: str, now: float) -> MemberUpdate | None:
        """Our own probe failed: mark ALIVE ``node_id`` SUSPECT; return the update to gossip."""
        m = self._members.get(node_id)
        if m is None or m.state != State.ALIVE:
            return None
        u = MemberUpdate(m.node_id, m.url, m.generation, m.incarnation, State.SUSPECT, self._me_id)
        self._set(replace(m, state=State.SUSPECT, state_since=now))
        self._suspicions[node_id] = _Suspicion(m.incarnation, now, {self._me_id})
        self.counts.bump("suspected")
        return u

    def leave(self, now: float) -> MemberUpdate:
        """Mark ourselves LEFT (graceful shutdown); return the announcement."""
        me = self.me
        self._set(replace(me, incarnation=me.incarnation + 1, state=State.LEFT, state_since=now))
        return self.me.update()

    def expire(self, now: float) -> list[MemberUpdate]:
        """Declare timed-out suspects DEAD (returned, to gossip); forget old tombstones."""
        out: list[MemberUpdate] = []
        for node_id in list(self._suspicions):
            deadline = self.suspicion_deadline(node_id)
            if deadline is not None and now >= deadline:
                m = self._members[node_id]
                dead = replace(m, state=State.DEAD, state_since=now)
                self._set(dead)
                self.counts.bump("declared_dead")
                out.append(dead.update())
        if now >= self._next_forget:  # tombstones need no precision: sweep once a second
            self._next_forget = now + 1.0
            ttl = self.config.tombstone_ttl
            for m in list(self._members.values()):
                if not m.live and m.node_id != self._me_id and now - m.state_since >= ttl:
                    del self._members[m.node_id]
        return out
