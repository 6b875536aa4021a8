"""The causal gate of the adapter's emits (docs/adapter.md, "Delivery contract").

A message this node sends after applying a peer's message must not reach anybody before that
message did. Each sender tells the nodes it sends to its *stable* watermark: the last of its
messages to that node that every node it went to has applied. An emit made while some message
this node applied is not stable yet waits at the gate until it is; emits that wait queue in call
order and only the front one may send, so a later emit never overtakes one that waits.

Every wait is bounded by the caller: a sender that does not report stable in time is marked
lagging (``on_late``) and not waited for until it reports past that point, so a stalled node
costs an emit ``order_timeout`` at most, once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

__all__ = ["CausalGate", "GateEntry"]

Mark = tuple[int, int]  # (epoch, seq) of a sender's message


class GateEntry:
    """An emit waiting for causal order: released once ``needs`` (per sender, the last
    message applied from it) are stable and every emit ahead of it has sent."""

    __slots__ = ("needs", "released")

    def __init__(self, needs: dict[str, Mark], released: asyncio.Future[None]) -> None:
        self.needs = needs
        self.released = released


class CausalGate:
    """What this node applied but its senders have not reported stable, and the emits that
    wait for it.

    ``applied(sender)`` is the last message applied from ``sender`` (the receiver's dedup
    watermark); ``live()`` the peers that are live members now (a sender that is not is never
    waited for); ``on_late(sender)`` is called when an emit stops waiting for ``sender``.
    """

    def __init__(
        self,
        *,
        applied: Callable[[str], Mark | None],
        live: Callable[[], set[str]],
        on_late: Callable[[str], None],
    ) -> None:
        self._applied = applied
        self._live = live
        self._on_late = on_late
        #: per sender: (epoch, stable watermark) it told this node (senders that keep one)
        self._stable: dict[str, Mark] = {}
        #: per sender: the (epoch, seq) this node stopped waiting for it to make stable
        self._lag: dict[str, Mark] = {}
        #: emits waiting for causal order, in call order: only the front one may send
        self._queue: deque[GateEntry] = deque()

    def __len__(self) -> int:
        """How many emits wait at the gate."""
        return len(self._queue)

    def _needs(self) -> dict[str, Mark]:
        """Per live sender: the (epoch, seq) of the last message this node applied from it,
        where the sender has not yet reported it stable (received everywhere it went)."""
        needs: dict[str, Mark] = {}
        live: set[str] | None = None
        for sender, told in self._stable.items():
            applied = self._applied(sender)
            if applied is None or told >= applied:
                continue
            lag = self._lag.get(sender)
            if lag is not None and lag >= applied:
                continue
            if live is None:
                live = self._live()
            if sender in live:
                needs[sender] = applied
        return needs

    def _met(self, sender: str, need: Mark) -> bool:
        told = self._stable.get(sender)
        lag = self._lag.get(sender)
        return (told is not None and told >= need) or (lag is not None and lag >= need)

    def join(self) -> GateEntry | None:
        """``None`` when a message may be sent now; else the caller's place in the gate
        (it must :meth:`leave` it, whatever happens)."""
        needs = self._needs()
        if not needs and not self._queue:
            return None
        entry = GateEntry(needs, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        self._open()
        return entry

    def _open(self) -> None:
        """Release the front of the gate once what it waits for is stable."""
        if self._queue:
            front = self._queue[0]
            if not front.released.done() and all(
                self._met(sender, need) for sender, need in front.needs.items()
            ):
                front.released.set_result(None)

    async def wait(self, entry: GateEntry, deadline: float) -> None:
        """Return once ``entry`` may send: what it waits for is stable, or ``deadline`` (loop
        time) passed and the senders still behind are marked lagging."""
        if entry.released.done():
            return
        loop = asyncio.get_running_loop()
        await asyncio.wait((entry.released,), timeout=max(0.0, deadline - loop.time()))
        if entry.released.done():
            return
        for sender, need in entry.needs.items():
            if self._met(sender, need):
                continue
            self._lag[sender] = need
            self._on_late(sender)
        self._open()
        await entry.released  # soon: every emit ahead of it in the gate is bounded too

    def leave(self, entry: GateEntry) -> None:
        """``entry`` sent (or gave up): the next one may go."""
        if self._queue and self._queue[0] is entry:
            self._queue.popleft()
        else:
            with contextlib.suppress(ValueError):
                self._queue.remove(entry)
        self._open()

    def note_stable(self, sender: str, epoch: int, stable: int) -> None:
        """``sender`` reports that its messages to this node up to ``stable`` (in its epoch
        ``epoch``) are received everywhere they went (so applied there before anything sent
        later)."""
        told = (epoch, stable)
        known = self._stable.get(sender)
        if known is not None and known >= told:
            return
        self._stable[sender] = told
        lag = self._lag.get(sender)
        if lag is not None and told >= lag:
            del self._lag[sender]
        self._open()
