"""The adapter's message encoding and receive-side deduplication. PURE: no asyncio, no clock.

One adapter message is one JSON object (``{"m": <method>, "ns": ..., ...}``), encoded once by
:func:`encode_message` and carried in an ``ADAPTER`` frame on the data link to each peer that
needs it (:mod:`siomesh.adapter.channel`), tagged with the sender's epoch (its process
generation) and a sequence number per (sender, receiver). The sender's identity is never in the
message: the receiver takes it from the link's authenticated peer.

Values travel as JSON, with ``bytes`` kept by :func:`siomesh.codec.pack` (re-exported here).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..codec import WireError, pack, unpack

__all__ = [
    "DedupWindow",
    "WireError",
    "encode_message",
    "pack",
    "unpack",
]


def encode_message(message: Mapping[str, Any]) -> str:
    """One message as JSON text, encoded once and shared by every link it is queued on.
    Its values must already be JSON-able (payloads passed through :func:`pack`)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class DedupWindow:
    """Which ``(sender, epoch, seq)`` have been delivered already.

    A sender's messages arrive in sequence order (one ordered link at a time; after a link
    breaks, the unacknowledged ones are resent in order), so the receiver only needs the highest
    sequence it has accepted per sender: a resent message that was in fact delivered carries a
    sequence at or below it and is skipped. A newer epoch (the
    sender restarted) resets the sender's watermark; an older epoch is a straggler from a dead
    process and is refused. Memory is one entry per sender ever heard from (bounded by
    ``max_senders``; the oldest-updated entry is forgotten first).
    """

    __slots__ = ("_marks", "max_senders")

    def __init__(self, max_senders: int = 4096) -> None:
        self._marks: dict[str, tuple[int, int]] = {}
        self.max_senders = max_senders

    def accept(self, sender: str, epoch: int, seq: int) -> bool:
        """True (and remember it) if this message was not delivered before."""
        mark = self._marks.get(sender)
        if mark is not None:
            known_epoch, last = mark
            if epoch < known_epoch or (epoch == known_epoch and seq <= last):
                return False
            del self._marks[sender]  # re-insert at the end: dict order is recency
        elif len(self._marks) >= self.max_senders:
            del self._marks[next(iter(self._marks))]
        self._marks[sender] = (epoch, seq)
        return True

    def watermark(self, sender: str) -> tuple[int, int] | None:
        """``(epoch, highest accepted seq)`` for ``sender``, if any."""
        return self._marks.get(sender)

    def snapshot(self) -> Mapping[str, tuple[int, int]]:
        return dict(self._marks)
