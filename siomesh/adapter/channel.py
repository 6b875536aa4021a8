"""PeerChannel: the adapter's ordered, acknowledged, bounded stream of messages to one peer.

Contract:

* :meth:`PeerChannel.enqueue` never blocks and never raises. Each message gets the next
  sequence number of this (sender generation, peer) pair and is sent at once as an ``ADAPTER``
  frame on this node's data link to the peer: pipelined, many in flight, no batch round trip.
* The peer acknowledges cumulatively (``ADAPTER_ACK``); a message stays queued until acked. When
  a link breaks and a new one comes up, every unacknowledged message is sent again, in order;
  the receiver applies each (epoch, seq) at most once (:class:`~siomesh.adapter.wire.DedupWindow`),
  so a peer that is unreachable for a while but stays a member gets everything, in order, once.
* Bounded: at most ``max_queue`` messages wait per peer. Beyond that (or when the peer is
  declared dead), messages are not kept: they are folded into one *gap* record (first and last
  sequence number, and which namespaces and rooms they were for) that takes their place in the
  queue. A gap is delivered like a message (``ADAPTER_GAP``): the receiver disconnects its
  clients that may have missed something, at the Engine.IO level, so that they reconnect and
  resync, as a Redis outage would make them. Never a silent hole.
* A message the peer would have got while it is not a live member (declared dead, or a seed
  gossip never heard from) is not queued but :meth:`PeerChannel.skip`-ped: it still takes the
  next sequence number, into a trailing gap. So if the peer comes back as the same process, the
  first thing it gets is a gap whose sequence number it has never seen (it cannot take it for a
  duplicate), before anything sent later. A gap carries the sequence number of the last message
  it replaces: a receiver that did apply all of them (they were in its socket buffer while it
  was frozen) skips it as a duplicate, rightly, since it missed none of them.
* Emit-completion order: a message may belong to an :class:`Emission` (one emit, sent to
  several peers), which the emitting coroutine awaits until every peer it was sent to has
  acknowledged it (the receiver acknowledges once the message is in its one apply queue,
  which it delivers in arrival order: :mod:`siomesh.adapter.turns`). A peer that does not
  acknowledge within the emit's bound is marked
  *lagging* (:meth:`PeerChannel.lag`): emits stop waiting for it until it has acknowledged
  everything it had been sent by then. The channel's *stable* watermark is the highest
  sequence number up to which every message's emission is complete (received everywhere it
  went, or given up on); the peer is told it (:meth:`PeerChannel.notify_stable`, an
  ``ADAPTER_ACK`` frame whose extra 16 bytes are this node's epoch and the watermark), so that
  it can keep causal order: it does not send a message of its own to its peers before what it
  applied from this node is stable.

Use from the node's event loop only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..counters import Stats
from ..links.frames import FrameType, encode_u64_pair
from ..links.link import Link
from ..ratelimit import RateLimitedLog

__all__ = ["Emission", "LinkSettings", "PeerChannel", "Targets", "merge_targets", "stable_notice"]

log = logging.getLogger("siomesh.adapter")

#: namespace -> the rooms concerned, or ``None`` for every client of the namespace
Targets = dict[str, list[Any] | None]

#: Seconds without an acknowledgement, while messages wait, after which a WARNING says so.
STALL_WARNING = 5.0


def stable_notice(epoch: int, stable: int) -> bytes:
    """An ``ADAPTER_ACK`` payload that acknowledges nothing (epoch 0 is never a sender's) and
    carries this node's ``epoch`` and its stable watermark for the receiving peer. A node that
    predates stable watermarks reads the first 16 bytes only, and ignores the frame."""
    return encode_u64_pair(0, 0, encode_u64_pair(epoch, stable))


class Emission:
    """One message (an emit, a room change, ...) sent to one or more peers, as its sender
    waits for it: ``pending`` peers have not acknowledged it yet (lagging peers are not waited
    for); ``done`` once the sender stopped waiting (everyone acknowledged, or the bound was
    hit). ``waiter`` (set by the one who waits) is resolved (``True``) when ``pending``
    reaches 0."""

    __slots__ = ("done", "entries", "pending", "waiter")

    def __init__(self) -> None:
        self.pending = 0
        self.done = False
        self.waiter: asyncio.Future[bool] | None = None
        #: (channel, sequence number) of each peer it was queued for
        self.entries: list[tuple[PeerChannel, int]] = []

    def acked(self) -> None:
        """One peer applied it (or will not be waited for)."""
        self.pending -= 1
        if self.pending <= 0 and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(True)


def merge_targets(into: Targets, more: Targets) -> None:
    """Fold ``more`` into ``into`` (a namespace that is wholly concerned stays so)."""
    for namespace, rooms in more.items():
        if namespace in into:
            mine = into[namespace]
            if mine is None or rooms is None:
                into[namespace] = None
            else:
                mine.extend(r for r in rooms if r not in mine)
                if len(mine) > 1000:  # too many to name: the whole namespace
                    into[namespace] = None
        else:
            into[namespace] = None if rooms is None else list(rooms)


class LinkSettings:
    """Tunables shared by every peer channel of a manager (documented in docs/adapter.md)."""

    __slots__ = ("max_queue",)

    def __init__(self, *, max_queue: int = 10_000) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be positive")
        self.max_queue = max_queue


@dataclass(slots=True)
class _Item:
    first: int
    last: int
    text: str | None  # None: a gap
    targets: Targets = field(default_factory=dict)


class PeerChannel:
    """The ordered channel from this node's adapter to ``peer`` (see the module docstring)."""

    def __init__(
        self,
        peer: str,
        *,
        epoch: int,
        current_link: Callable[[str], Link | None],
        dial: Callable[[str], None],
        settings: LinkSettings,
        warn: RateLimitedLog,
    ) -> None:
        self.peer = peer
        self.epoch = epoch
        self._current_link = current_link
        self._dial = dial
        self._settings = settings
        self._warn = warn
        self._unsent: deque[_Item] = deque()
        self._unacked: deque[_Item] = deque()
        self._seq = 0
        self._link: Link | None = None
        self._messages = 0  # messages (not gaps) held
        self._skipping = False  # skip() was called since the last enqueue()
        #: when the peer last acknowledged, or the queue last became non-empty (monotonic)
        self._progress_at = time.monotonic()
        self._stalled_since: float | None = None
        self._acked_at: float | None = None  # when the peer last acknowledged something new
        #: emissions waiting for this peer's acknowledgement, by sequence number
        self._awaiting: deque[tuple[int, Emission]] = deque()
        #: emissions not done yet, by sequence number (they hold the stable watermark back)
        self._unstable: deque[tuple[int, Emission]] = deque()
        self._stable_sent = -1  # the watermark last told to the peer (-1: nothing told yet)
        #: emits do not wait for this peer until it acknowledges ``_lag_mark`` (see ``lag``)
        self.lagging = False
        self._lag_mark = 0
        #: this channel's counters (``adapter_peer`` in siomesh.counters)
        self.stats = Stats("adapter_peer")

    def __len__(self) -> int:
        return self._messages

    @property
    def idle(self) -> bool:
        return not self._unsent and not self._unacked

    @property
    def stable(self) -> int:
        """The highest sequence number up to which every message's emission is done."""
        return self._unstable[0][0] - 1 if self._unstable else self._seq

    def enqueue(self, text: str, targets: Targets, emission: Emission | None = None) -> bool:
        """Queue one encoded message; False when it was folded into a gap instead. With an
        ``emission``, the message is waited for (unless the peer is lagging) and holds the
        stable watermark back until the emission is done."""
        if self.idle:
            self._progress_at = time.monotonic()
        self._skipping = False
        self._seq += 1
        if self._messages >= self._settings.max_queue:
            self._fold(self._seq, self._seq, targets)
            self._warn.warning(
                ("full", self.peer),
                "adapter queue to %s is full (%d messages): later messages are dropped and "
                "the clients they were for will be disconnected to resync",
                self.peer,
                self._messages,
            )
            return False
        self._unsent.append(_Item(self._seq, self._seq, text, targets))
        self._messages += 1
        if emission is not None:
            self._unstable.append((self._seq, emission))
            emission.entries.append((self, self._seq))
            if not self.lagging:
                self._awaiting.append((self._seq, emission))
                emission.pending += 1
        self.pump()
        return True

    def waits_for(self, seq: int) -> bool:
        """Whether message ``seq`` is still waited for (not acknowledged, peer not lagging)."""
        return bool(self._awaiting) and self._awaiting[0][0] <= seq

    def timed_out(self, now: float, bound: float) -> None:
        """An emit stopped waiting for this peer after ``bound`` seconds (counted in
        ``order_timeouts``). A peer that acknowledged something within ``bound`` is busy, not
        stalled: it is still waited for by later emits. One that did not is marked lagging."""
        self.stats.bump("order_timeouts")
        if self._acked_at is not None and now - self._acked_at < bound:
            self._warn.warning(
                ("busy", self.peer),
                "adapter: an emit returned after adapter.order_timeout (%.2f s) before %s "
                "received it: that node is busy (%d messages wait for it); its clients may get "
                "that message after later ones from other nodes",
                bound,
                self.peer,
                self._messages,
            )
            return
        self.lag("no acknowledgement", bound)

    def lag(self, why: str, bound: float) -> None:
        """The peer cannot apply messages within an emit's bound (``why``): stop waiting for
        it (every emission waiting for it is released) until it has acknowledged everything
        sent to it so far. Counted (``lagging``) and said once per episode."""
        self._release()
        if self.lagging:
            return
        self.lagging = True
        self._lag_mark = self._seq
        self.stats.bump("lagging")
        self._warn.warning(
            ("lagging", self.peer),
            "adapter: %s has not acknowledged anything for adapter.order_timeout (%.2f s; %s): "
            "emits stop waiting for it until it catches up; meanwhile its clients may get "
            "messages from different nodes out of order (nothing is lost: what it misses is "
            "held for it, or its clients are disconnected to resync)",
            self.peer,
            bound,
            why,
        )

    def _release(self) -> None:
        while self._awaiting:
            self._awaiting.popleft()[1].acked()

    def settle(self) -> bool:
        """Drop done emissions from the front; True when the stable watermark moved past what
        the peer was last told."""
        while self._unstable and self._unstable[0][1].done:
            self._unstable.popleft()
        return self.stable > self._stable_sent

    def notify_stable(self) -> None:
        """Tell the peer the stable watermark, if it moved and a link is up (a new link is
        told at once, before anything else is sent on it)."""
        if self.stable <= self._stable_sent:
            return
        link = self._current_link(self.peer)
        if link is None:
            return
        if link is not self._link:
            self.pump()  # adopts the link: announces the watermark, resends what is unacked
            if link is self._link:
                return
        if link.send(FrameType.ADAPTER_ACK, 0, stable_notice(self.epoch, self.stable)):
            self._stable_sent = self.stable

    def skip(self, targets: Targets, why: str) -> None:
        """Record that a message for ``targets`` was not sent to the peer, because it is not a
        live member (``why``): the message takes the next sequence number, folded into the
        trailing gap, so that if the peer comes back its clients that may have missed it are
        disconnected to resync (see the module docstring). Never sends anything."""
        if not targets:
            return  # concerns no client there (an ack, a server event): nobody to resync
        if self.idle:
            self._progress_at = time.monotonic()
        if not self._skipping:
            self._skipping = True
            log.info(
                "adapter messages for %s are not sent while it %s; if it comes back, its "
                "clients that may have missed them are disconnected to resync",
                self.peer,
                why,
            )
        self._seq += 1
        self._fold(self._seq, self._seq, targets)

    def _fold(self, first: int, last: int, targets: Targets) -> None:
        """Record messages first..last as lost (a trailing gap absorbs them)."""
        self.stats.bump("gap_messages", last - first + 1)
        tail = self._unsent[-1] if self._unsent else None
        if tail is not None and tail.text is None and tail.last + 1 == first:
            tail.last = last
            merge_targets(tail.targets, targets)
            return
        gap = _Item(first, last, None, {})
        merge_targets(gap.targets, targets)
        self._unsent.append(gap)
        self.stats.bump("gaps")

    def abandon(self, why: str) -> int:
        """Replace every queued message by one gap (the peer is declared dead): if it comes
        back, its clients that missed them are disconnected. Returns the messages dropped."""
        self._release()  # nobody waits for a peer that is no longer a member
        items = [*self._unacked, *self._unsent]
        if not items or all(i.text is None for i in items):
            return 0
        dropped = self._messages
        self._unacked.clear()
        self._unsent.clear()
        self._messages = 0
        gap = _Item(items[0].first, items[-1].last, None, {})
        for item in items:
            merge_targets(gap.targets, item.targets)
        self._unsent.append(gap)
        self.stats.bump("gap_messages", dropped)
        self.stats.bump("gaps")
        log.warning(
            "dropped %d adapter messages to %s (%s); its clients will be disconnected to "
            "resync if it comes back",
            dropped,
            self.peer,
            why,
        )
        return dropped

    def check_stalled(self, now: float) -> None:
        """Say once (per episode) that messages have waited :data:`STALL_WARNING` seconds for
        an acknowledgement: the peer is unreachable (partitioned, frozen) but still a member,
        and what it misses is held for it, up to ``max_queue``."""
        if self.idle or self._stalled_since is not None:
            return
        if now - self._progress_at < STALL_WARNING:
            return
        self._stalled_since = self._progress_at
        self.stats.bump("stalls")
        log.warning(
            "adapter: %d messages to %s not acknowledged for %.0f s (no working link to it: a "
            "network partition, or the process is frozen); they are held and delivered in "
            "order when it answers again, up to adapter.max_queue = %d; beyond that they are "
            "dropped and its clients disconnected to resync",
            self._messages,
            self.peer,
            now - self._progress_at,
            self._settings.max_queue,
        )

    def pump(self) -> None:
        """Send what can be sent now on the current link (dialling one if there is none)."""
        if not self._unsent and not self._unacked and self.stable <= self._stable_sent:
            return
        link = self._current_link(self.peer)
        if link is None:
            if self._unsent or self._unacked:
                self._dial(self.peer)
            return
        if link is not self._link:
            # a new link incarnation: whatever the old one carried may not have arrived. The
            # first frame on it says this node keeps stable watermarks (and the current one),
            # so that the peer knows it before it applies anything sent on it.
            self._link = link
            if link.send(FrameType.ADAPTER_ACK, 0, stable_notice(self.epoch, self.stable)):
                self._stable_sent = self.stable
            if self._unacked:
                self.stats.bump("resent", sum(1 for i in self._unacked if i.text is not None))
                self._unsent.extendleft(reversed(self._unacked))
                self._unacked.clear()
        while self._unsent:
            item = self._unsent[0]
            if item.text is None:
                detail = json.dumps({"first": item.first, "targets": item.targets}, default=str)
                payload = encode_u64_pair(self.epoch, item.last, detail.encode())
                kind = FrameType.ADAPTER_GAP
            else:
                payload = encode_u64_pair(self.epoch, item.last, item.text.encode())
                kind = FrameType.ADAPTER
            if not link.send(kind, 0, payload):
                return  # buffer full or link closed: the next pump (tick, ack, link up) resumes
            self._unacked.append(self._unsent.popleft())
            if item.text is not None:
                self.stats.bump("sent")

    def on_ack(self, epoch: int, seq: int) -> None:
        """The peer applied everything up to ``seq``."""
        if epoch != self.epoch:
            return
        while self._awaiting and self._awaiting[0][0] <= seq:
            self._awaiting.popleft()[1].acked()
        if self.lagging and seq >= self._lag_mark:
            self.lagging = False
            log.info("adapter: %s caught up; emits wait for it again", self.peer)
        progressed = False
        while self._unacked and self._unacked[0].last <= seq:
            item = self._unacked.popleft()
            progressed = True
            if item.text is not None:
                self._messages -= 1
                self.stats.bump("acked")
        if progressed:
            self._progress_at = self._acked_at = time.monotonic()
            if self._stalled_since is not None:
                log.warning(
                    "adapter: %s acknowledges again after %.1f s: what was held for it is "
                    "delivered, in order (%d messages still queued)",
                    self.peer,
                    self._progress_at - self._stalled_since,
                    self._messages,
                )
                self._stalled_since = None
        if self._unsent:
            self.pump()
