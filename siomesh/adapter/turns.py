"""Turns: this node's own deliveries wait for the peers' messages it received before them.

A peer acknowledges an adapter message as soon as it is *received* (queued in the node's one
apply queue, :class:`~siomesh.adapter.inbound.Inbound`), not once it is applied; so a sender's
emit returns one round trip after it was sent, whatever the receivers' fan-out costs. That
keeps emit-completion order (docs/adapter.md, "Delivery contract") only if a node delivers
everything in the order it received it: its peers' messages, in one queue across senders, and
its own emits, after every peer message it had received when the emit was made. This module
is the second half: an emit's local half *joins* here with a mark (how many peer messages the
node had received) and runs once that many are applied.

Turns are released one at a time, in the order they joined (their marks never decrease): the
next one only once the one ahead has left, even when its own mark is met, so the local halves
of concurrent emits still run in call order. Use from the node's event loop
only; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["Turn", "Turns"]


class Turn:
    """One local half waiting for the apply queue to reach ``mark``."""

    __slots__ = ("mark", "released")

    def __init__(self, mark: int, released: asyncio.Future[None]) -> None:
        self.mark = mark
        self.released = released


class Turns:
    """Counts of peer messages received and applied, and the local halves waiting on them."""

    def __init__(self) -> None:
        #: peer messages (frames) queued for apply so far
        self.received = 0
        #: of them, applied (or skipped) so far
        self.applied = 0
        self._waiting: deque[Turn] = deque()
        #: ``applied`` when a wait last timed out: until the apply queue moves on from
        #: there, nobody waits (a hung handler costs one ``timeout``, not one per emit)
        self._stuck_at: int | None = None

    def __len__(self) -> int:
        """How many local halves wait (or were released and have not left yet)."""
        return len(self._waiting)

    def join(self) -> Turn | None:
        """``None`` when the caller may deliver now (nothing received is unapplied, nobody
        waits); else its turn, which it must :meth:`leave` whatever happens."""
        if self._stuck_at is not None:
            if self.applied == self._stuck_at:
                return None
            self._stuck_at = None
        if not self._waiting and self.applied >= self.received:
            return None
        turn = Turn(self.received, asyncio.get_running_loop().create_future())
        self._waiting.append(turn)
        self._release()
        return turn

    def advance(self) -> None:
        """One more received message is applied (called by the apply queue's consumer)."""
        self.applied += 1
        self._release()

    def flush(self) -> None:
        """Everything received counts as applied (the consumer stopped): release every turn."""
        self.applied = self.received
        for turn in self._waiting:
            if not turn.released.done():
                turn.released.set_result(None)

    def _release(self) -> None:
        """Release the front turn once its mark is met; the next one only after it left."""
        if self._waiting:
            front = self._waiting[0]
            if front.mark <= self.applied and not front.released.done():
                front.released.set_result(None)

    async def wait(self, turn: Turn, timeout: float) -> bool:
        """Wait until ``turn`` may deliver: True, or False when ``timeout`` seconds passed first
        (the caller goes ahead, out of order, and says so; later joins do not wait until the
        apply queue moves on)."""
        if turn.released.done():
            return True
        await asyncio.wait((turn.released,), timeout=max(0.0, timeout))
        if turn.released.done():
            return True
        self._stuck_at = self.applied
        return False

    def leave(self, turn: Turn) -> None:
        """``turn`` delivered (or gave up)."""
        if self._waiting and self._waiting[0] is turn:
            self._waiting.popleft()
        else:
            with contextlib.suppress(ValueError):
                self._waiting.remove(turn)
        self._release()
