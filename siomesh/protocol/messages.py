"""Every gossip wire message, and the one codec that turns them into bytes and back.

Messages are frozen dataclasses; :func:`encode` writes compact JSON (a top-level array
``[version, kind, ...fields]``, ASCII only, no spaces) and :func:`decode` reads it back.

Contract of :func:`decode`: for *any* ``bytes`` input it either returns a well-typed message whose
fields satisfy the invariants below, or raises :class:`DecodeError` (a ``ValueError``) with a
message saying what was wrong. It never raises anything else, never returns a partially checked
object, and refuses input longer than ``max_bytes`` before parsing it.

Field invariants checked on decode: integers are JSON integers (not booleans, not floats) in
``[0, 2**63)``; strings are strings; booleans are ``true``/``false``; a member state is one of
:class:`State`; lists have the documented arity.

Membership updates (alive / suspect / dead / left) are one dataclass, :class:`MemberUpdate`, with
a ``state`` field: they share every other field, and one shape keeps the piggyback queue simple.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "Ack",
    "Ack2",
    "DecodeError",
    "DigestItem",
    "Entry",
    "MemberUpdate",
    "Message",
    "OriginDelta",
    "Ping",
    "PingReq",
    "Push",
    "State",
    "Syn",
    "SynAck",
    "decode",
    "encode",
    "json_str_len",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 60_000
_MAX_INT = 2**63


class DecodeError(ValueError):
    """The bytes are not a valid siomesh gossip message (the message says why)."""


class State(enum.IntEnum):
    """A member's state. The numeric order is *not* precedence; see membership.rank()."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """What one node claims about one member: alive, suspect, dead or left.

    ``by`` names the node that suspects (Lifeguard counts independent suspicions); it is ``""``
    for other states.
    """

    node_id: str
    url: str
    generation: int
    incarnation: int
    state: State
    by: str = ""


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry of an origin: ``deleted`` entries are tombstones (value ``""``)."""

    key: str
    value: str
    version: int
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class OriginDelta:
    """Entries of one origin that cover the version range ``(from_version, to_version]``.

    The sender holds every entry of that range it still stores; entries overwritten by a
    version above ``to_version`` are absent (Scuttlebutt). ``reset`` means "drop what you hold
    for this origin and start again from these entries" (the receiver was too far behind for
    tombstone GC, or holds an older generation); ``gc_floor`` is the sender's highest collected
    tombstone version for the origin, which a reset receiver adopts.
    """

    origin: str
    generation: int
    from_version: int
    to_version: int
    reset: bool
    gc_floor: int
    entries: tuple[Entry, ...]


# (origin, generation, max_version, gc_floor): one line of a Scuttlebutt digest.
DigestItem: TypeAlias = tuple[str, int, int, int]


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe; the receiver answers :class:`Ack` with the same ``seq`` to the sender."""

    sender: str
    seq: int
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a :class:`Ping` (or relayed answer of an indirect probe)."""

    sender: str
    seq: int
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask the receiver to probe ``target_url`` and relay the :class:`Ack` as ``seq``."""

    sender: str
    seq: int
    target_id: str
    target_url: str
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class Push:
    """Eager gossip: fresh directory deltas and piggybacked membership updates; no answer."""

    sender: str
    deltas: tuple[OriginDelta, ...] = ()
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class Syn:
    """Anti-entropy opener: the sender's full member list and directory digest."""

    sender: str
    members: tuple[MemberUpdate, ...]
    digest: tuple[DigestItem, ...]


@dataclass(frozen=True, slots=True)
class SynAck:
    """Answer to :class:`Syn`: own members and digest, plus what the Syn's sender lacks."""

    sender: str
    members: tuple[MemberUpdate, ...]
    digest: tuple[DigestItem, ...]
    deltas: tuple[OriginDelta, ...]


@dataclass(frozen=True, slots=True)
class Ack2:
    """Last leg of anti-entropy: what the SynAck's sender lacks."""

    sender: str
    deltas: tuple[OriginDelta, ...]
    updates: tuple[MemberUpdate, ...] = ()


Message: TypeAlias = Ping | Ack | PingReq | Push | Syn | SynAck | Ack2


# --------------------------------------------------------------------------- encoding


def _upd(u: MemberUpdate) -> list[Any]:
    return [u.node_id, u.url, u.generation, u.incarnation, int(u.state), u.by]


def _delta(d: OriginDelta) -> list[Any]:
    return [
        d.origin,
        d.generation,
        d.from_version,
        d.to_version,
        d.reset,
        d.gc_floor,
        [[e.key, e.value, e.version, e.deleted] for e in d.entries],
    ]


def _fields(msg: Message) -> list[Any]:
    if isinstance(msg, Ping):
        return ["ping", msg.sender, msg.seq, [_upd(u) for u in msg.updates]]
    if isinstance(msg, Ack):
        return ["ack", msg.sender, msg.seq, [_upd(u) for u in msg.updates]]
    if isinstance(msg, PingReq):
        return [
            "pingreq",
            msg.sender,
            msg.seq,
            msg.target_id,
            msg.target_url,
            [_upd(u) for u in msg.updates],
        ]
    if isinstance(msg, Push):
        return [
            "push",
            msg.sender,
            [_delta(d) for d in msg.deltas],
            [_upd(u) for u in msg.updates],
        ]
    if isinstance(msg, Syn):
        return ["syn", msg.sender, [_upd(u) for u in msg.members], [list(i) for i in msg.digest]]
    if isinstance(msg, SynAck):
        return [
            "synack",
            msg.sender,
            [_upd(u) for u in msg.members],
            [list(i) for i in msg.digest],
            [_delta(d) for d in msg.deltas],
        ]
    return ["ack2", msg.sender, [_delta(d) for d in msg.deltas], [_upd(u) for u in msg.updates]]


def encode(msg: Message) -> bytes:
    """Serialize ``msg`` (ASCII JSON). Sizes are predictable: see :func:`json_str_len`."""
    return json.dumps([PROTOCOL_VERSION, *_fields(msg)], separators=(",", ":")).encode("ascii")


def json_str_len(s: str) -> int:
    """Exact length of ``s`` as an encoded JSON string literal, quotes included.

    Fast path for the common case (printable ASCII without quotes or backslashes) so the
    directory can budget deltas without serializing every entry.
    """
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return len(s) + 2
    return len(json.dumps(s))


# --------------------------------------------------------------------------- decoding


def _int(x: object, what: str) -> int:
    if type(x) is not int or not 0 <= x < _MAX_INT:
        raise DecodeError(f"{what}: expected an integer in [0, 2**63), got {_short(x)}")
    return x


def _str(x: object, what: str) -> str:
    if type(x) is not str:
        raise DecodeError(f"{what}: expected a string, got {_short(x)}")
    return x


def _bool(x: object, what: str) -> bool:
    if type(x) is not bool:
        raise DecodeError(f"{what}: expected true or false, got {_short(x)}")
    return x


def _list(x: object, what: str, n: int | None = None) -> list[Any]:
    if type(x) is not list:
        raise DecodeError(f"{what}: expected a list, got {_short(x)}")
    if n is not None and len(x) != n:
        raise DecodeError(f"{what}: expected {n} items, got {len(x)}")
    return x


def _short(x: object) -> str:
    r = repr(x)
    return r if len(r) <= 40 else r[:37] + "..."


def _dec_upd(x: object) -> MemberUpdate:
    f = _list(x, "member update", 6)
    state = _int(f[4], "member state")
    if state > State.LEFT:
        raise DecodeError(f"member state: unknown value {state}")
    return MemberUpdate(
        _str(f[0], "node id"),
        _str(f[1], "url"),
        _int(f[2], "generation"),
        _int(f[3], "incarnation"),
        State(state),
        _str(f[5], "suspected by"),
    )


def _dec_upds(x: object) -> tuple[MemberUpdate, ...]:
    return tuple(_dec_upd(u) for u in _list(x, "member updates"))


def _dec_entry(x: object) -> Entry:
    f = _list(x, "entry", 4)
    return Entry(
        _str(f[0], "entry key"),
        _str(f[1], "entry value"),
        _int(f[2], "entry version"),
        _bool(f[3], "entry deleted"),
    )


def _dec_delta(x: object) -> OriginDelta:
    f = _list(x, "origin delta", 7)
    d = OriginDelta(
        _str(f[0], "origin"),
        _int(f[1], "generation"),
        _int(f[2], "from version"),
        _int(f[3], "to version"),
        _bool(f[4], "reset"),
        _int(f[5], "gc floor"),
        tuple(_dec_entry(e) for e in _list(f[6], "entries")),
    )
    if d.from_version > d.to_version:
        raise DecodeError("origin delta: from version above to version")
    for e in d.entries:
        if not d.from_version < e.version <= d.to_version:
            raise DecodeError("origin delta: entry version outside (from, to]")
    return d


def _dec_deltas(x: object) -> tuple[OriginDelta, ...]:
    return tuple(_dec_delta(d) for d in _list(x, "deltas"))


def _dec_digest(x: object) -> tuple[DigestItem, ...]:
    out: list[DigestItem] = []
    for item in _list(x, "digest"):
        f = _list(item, "digest item", 4)
        out.append(
            (
                _str(f[0], "digest origin"),
                _int(f[1], "digest generation"),
                _int(f[2], "digest max version"),
                _int(f[3], "digest gc floor"),
            )
        )
    return tuple(out)


_ARITY = {"ping": 4, "ack": 4, "pingreq": 6, "push": 4, "syn": 4, "synack": 5, "ack2": 4}


def _dec_fields(kind: str, f: list[Any]) -> Message:
    sender = _str(f[1], "sender")
    if kind == "ping":
        return Ping(sender, _int(f[2], "seq"), _dec_upds(f[3]))
    if kind == "ack":
        return Ack(sender, _int(f[2], "seq"), _dec_upds(f[3]))
    if kind == "pingreq":
        return PingReq(
            sender,
            _int(f[2], "seq"),
            _str(f[3], "target id"),
            _str(f[4], "target url"),
            _dec_upds(f[5]),
        )
    if kind == "push":
        return Push(sender, _dec_deltas(f[2]), _dec_upds(f[3]))
    if kind == "syn":
        return Syn(sender, _dec_upds(f[2]), _dec_digest(f[3]))
    if kind == "synack":
        return SynAck(sender, _dec_upds(f[2]), _dec_digest(f[3]), _dec_deltas(f[4]))
    return Ack2(sender, _dec_deltas(f[2]), _dec_upds(f[3]))


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Parse one message; raise :class:`DecodeError` (only) on anything malformed.

    ``max_bytes`` bounds the input size (checked before parsing, so an oversized body costs
    nothing). Unknown protocol versions and kinds are rejected rather than guessed at.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise DecodeError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limits, depth
        raise DecodeError(f"not JSON: {_short(str(exc))}") from None
    f = _list(raw, "message")
    if len(f) < 2:
        raise DecodeError("message: expected [version, kind, ...]")
    if type(f[0]) is not int or f[0] != PROTOCOL_VERSION:
        raise DecodeError(f"unsupported protocol version {_short(f[0])}")
    kind = f[1]
    if type(kind) is not str or kind not in _ARITY:
        raise DecodeError(f"unknown message kind {_short(kind)}")
    if len(f) != _ARITY[kind] + 1:
        raise DecodeError(f"{kind}: expected {_ARITY[kind] + 1} fields, got {len(f)}")
    return _dec_fields(kind, f[1:])
