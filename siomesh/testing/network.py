"""A lossy, partitionable, seeded fake network that runs every message through the codec."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from siomesh.protocol.messages import DEFAULT_MAX_MESSAGE_BYTES, Message, decode, encode

__all__ = ["FakeNetwork", "LinkStats"]


@dataclass(slots=True)
class LinkStats:
    """Counters of one sender URL (bytes are encoded message sizes)."""

    messages: int = 0
    bytes: int = 0
    dropped: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class FakeNetwork:
    """Decides, for each message, whether and when it arrives.

    * latency: ``latency + uniform(0, jitter)`` seconds, or a per-link override
      (:meth:`set_link_latency`);
    * loss: each message is dropped with probability ``loss`` (independently);
    * partitions: :meth:`partition` splits URLs into groups; URLs named in no group form one
      more group; messages cross no group boundary until :meth:`heal`;
    * cuts: :meth:`cut` stops messages between two URLs only, both ways (each still reaches
      the others), until :meth:`heal`.

    Every message is encoded and decoded with the real codec, so the simulation exercises the
    wire format and its size limit; an encoding over ``max_message_bytes`` raises, because it
    is a protocol bug, not a network condition.
    """

    def __init__(
        self,
        rng: random.Random,
        latency: float = 0.001,
        jitter: float = 0.001,
        loss: float = 0.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.rng = rng
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.max_message_bytes = max_message_bytes
        self.stats: dict[str, LinkStats] = {}
        self._links: dict[tuple[str, str], float] = {}
        self._group: dict[str, int] | None = None
        self._cuts: set[frozenset[str]] = set()

    def set_loss(self, p: float) -> None:
        if not 0 <= p <= 1:
            raise ValueError("loss probability must be within [0, 1]")
        self.loss = p

    def set_link_latency(self, src: str, dst: str, seconds: float) -> None:
        self._links[(src, dst)] = seconds

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        self._group = {url: i for i, g in enumerate(groups) for url in g}

    def cut(self, a: str, b: str) -> None:
        self._cuts.add(frozenset((a, b)))

    def heal(self) -> None:
        self._group = None
        self._cuts.clear()

    def reachable(self, src: str, dst: str) -> bool:
        if self._cuts and frozenset((src, dst)) in self._cuts:
            return False
        g = self._group
        return g is None or g.get(src, -1) == g.get(dst, -1)

    def transmit(self, src: str, dst: str, msg: Message) -> tuple[float, Message] | None:
        """Return ``(delay, message as decoded at dst)``, or None when the message is lost."""
        data = encode(msg)
        if len(data) > self.max_message_bytes:
            raise AssertionError(f"{type(msg).__name__} of {len(data)} bytes exceeds the limit")
        st = self.stats.get(src)
        if st is None:
            st = self.stats[src] = LinkStats()
        st.messages += 1
        st.bytes += len(data)
        kind = type(msg).__name__
        st.by_kind[kind] = st.by_kind.get(kind, 0) + len(data)
        if not self.reachable(src, dst) or (self.loss and self.rng.random() < self.loss):
            st.dropped += 1
            return None
        delay = self._links.get((src, dst))
        if delay is None:
            delay = self.latency + self.rng.random() * self.jitter
        return delay, decode(data, self.max_message_bytes)

    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.stats.values())
