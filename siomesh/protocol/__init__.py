"""The pure gossip core: membership (SWIM), directory (Scuttlebutt), wire codec, node.

Nothing in this package does I/O, reads a clock or draws random numbers on its own: time is
passed in as ``now`` (float seconds) and randomness as an ``rng`` object. The asyncio runtime
and :mod:`siomesh.testing`'s simulator drive the same :class:`Node`.
"""

from __future__ import annotations

from siomesh.protocol.directory import (
    Digest,
    Directory,
    engineio_key,
    room_key,
    socketio_key,
)
from siomesh.protocol.membership import GossipConfig, Member, Membership, supersedes
from siomesh.protocol.messages import (
    Ack,
    Ack2,
    DecodeError,
    Entry,
    MemberUpdate,
    Message,
    OriginDelta,
    Ping,
    PingReq,
    Push,
    State,
    Syn,
    SynAck,
    decode,
    encode,
)
from siomesh.protocol.node import Node, Outbound, Rng

__all__ = [
    "Ack",
    "Ack2",
    "DecodeError",
    "Digest",
    "Directory",
    "Entry",
    "GossipConfig",
    "Member",
    "MemberUpdate",
    "Membership",
    "Message",
    "Node",
    "OriginDelta",
    "Outbound",
    "Ping",
    "PingReq",
    "Push",
    "Rng",
    "State",
    "Syn",
    "SynAck",
    "decode",
    "encode",
    "engineio_key",
    "room_key",
    "socketio_key",
    "supersedes",
]
