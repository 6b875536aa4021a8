"""The adapter's message encoding and receive-side deduplication. PURE: no asyncio, no clock.

One adapter message is one JSON object (``{"m": <method>, "ns": ..., ...}``), encoded once by
:func:`encode_message` and carried in an ``ADAPTER`` frame on the data link to each peer that
needs it (:mod:`siomesh.adapter.channel`), tagged with the sender's epoch (its process
generation) and a sequence number per (sender, receiver). The sender's identity is never in the
message: the receiver takes it from the link's authenticated peer.

Values travel as JSON. Python's ``bytes`` (Socket.IO binary payloads) have no JSON form, so
:func:`pack` turns them into ``{"$b": "<base64>"}``; a dict that happens to have a ``"$b"`` or
``"$d"`` key is escaped as ``{"$d": {...}}`` so that every value round-trips exactly. Tuples
become lists (as Socket.IO's own JSON encoding does). No pickle: a message can only ever decode
into JSON types plus ``bytes``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DedupWindow",
    "WireError",
    "encode_message",
    "pack",
    "unpack",
]

_BYTES = "$b"
_DICT = "$d"
_MAX_DEPTH = 64


class WireError(ValueError):
    """A batch or value that does not decode (the endpoint answers 400)."""


def pack(value: Any, _depth: int = 0) -> Any:
    """``value`` as JSON-able data, with ``bytes`` preserved (see the module docstring)."""
    if _depth > _MAX_DEPTH:
        raise WireError("value nested too deeply")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_BYTES: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [pack(item, _depth + 1) for item in value]
    if isinstance(value, dict):
        packed = {key: pack(item, _depth + 1) for key, item in value.items()}
        if _BYTES in value or _DICT in value:
            return {_DICT: packed}
        return packed
    return value


def unpack(value: Any, _depth: int = 0) -> Any:
    """Inverse of :func:`pack`. Raises :class:`WireError` on a malformed tag."""
    if _depth > _MAX_DEPTH:
        raise WireError("value nested too deeply")
    if isinstance(value, list):
        return [unpack(item, _depth + 1) for item in value]
    if isinstance(value, dict):
        if len(value) == 1:
            if _BYTES in value:
                encoded = value[_BYTES]
                if not isinstance(encoded, str):
                    raise WireError("bad bytes tag")
                try:
                    return base64.b64decode(encoded, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise WireError("bad base64") from exc
            if _DICT in value:
                inner = value[_DICT]
                if not isinstance(inner, dict):
                    raise WireError("bad dict tag")
                return {key: unpack(item, _depth + 1) for key, item in inner.items()}
        return {key: unpack(item, _depth + 1) for key, item in value.items()}
    return value


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
