"""The values nodes exchange, as JSON: one codec below the adapter, recovery and takeover.
PURE: no I/O.

Python's ``bytes`` (Socket.IO binary payloads) have no JSON form, so :func:`pack` turns them
into ``{"$b": "<base64>"}``; a dict that happens to have a ``"$b"`` or ``"$d"`` key is escaped
as ``{"$d": {...}}`` so that every value round-trips exactly. Tuples become lists (as
Socket.IO's own JSON encoding does). No pickle: a value can only ever decode into JSON types
plus ``bytes``. Engine.IO packets (a session's held or queued packets, moved by a takeover)
travel as ``[type, packed data]``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from engineio import packet as eio_packet

__all__ = ["WireError", "decode_packet", "encode_packet", "pack", "unpack"]

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


def encode_packet(pkt: Any) -> list[Any]:
    """An Engine.IO packet (``engineio.packet.Packet``) as JSON-able data."""
    return [pkt.packet_type, pack(pkt.data)]


def decode_packet(raw: Any) -> Any:
    """Inverse of :func:`encode_packet`. Raises :class:`WireError`."""
    if not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[0], int):
        raise WireError("malformed packet")
    kind, data = raw
    if not 0 <= kind < len(eio_packet.packet_names):
        raise WireError("unknown packet type")
    return eio_packet.Packet(kind, unpack(data))
