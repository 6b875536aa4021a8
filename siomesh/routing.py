"""The routing decision for one Engine.IO request: a pure function, the heart of siomesh.

The rules (design.md, "Routing rules"), in the order they apply:

1. no sid (a handshake) or an ``OPTIONS`` preflight: serve here (every node answers CORS alike);
2. the sid is live on this node: serve here;
3. this node handed the session to another member (upgrade takeover) and keeps a pointer to it:
   forward there (a session moves at most once, so this adds one hop at most);
4. the request was forwarded by a verified peer: serve here, never forward again (no loops);
5. the owner is known (a live directory entry, else the tag inside the sid) and is a live
   member other than this node: forward to that member's *advertised* URL, never to an address
   taken from the request. A live entry wins over another origin's tombstone: a session taken
   over is deleted by its old owner and added by its new one;
6. the directory says the sid was closed (tombstone): reject;
7. anything else (malformed or foreign sid, owner dead, restarted or not a member, our own sid no
   longer live): reject at once with python-engineio's own ``400 Invalid session``.

Pure: no I/O, no clock. Thread-safe as long as the view is.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Mapping
from dataclasses import dataclass

from .cluster import ClusterView
from .sid import SidKeys, parse_sid

__all__ = ["Action", "Decision", "decide"]


class Action(enum.Enum):
    SERVE = "serve"
    FORWARD = "forward"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    target: str | None = None


_SERVE_HANDSHAKE = Decision(Action.SERVE, "no sid")
_SERVE_PREFLIGHT = Decision(Action.SERVE, "preflight")
_SERVE_LOCAL = Decision(Action.SERVE, "local sid")
_SERVE_FORWARDED = Decision(Action.SERVE, "already forwarded")
_REJECT_TOMBSTONE = Decision(Action.REJECT, "sid closed")
_REJECT_MALFORMED = Decision(Action.REJECT, "malformed or foreign sid")
_REJECT_OWN = Decision(Action.REJECT, "own sid no longer live")
_REJECT_UNKNOWN = Decision(Action.REJECT, "owner is not a member")
_REJECT_DEAD = Decision(Action.REJECT, "owner is dead")
_REJECT_RESTARTED = Decision(Action.REJECT, "owner restarted")


def decide(
    *,
    method: str,
    sid: str | None,
    local_sids: Container[str],
    forwarded: bool,
    view: ClusterView,
    keys: SidKeys,
    moved: Mapping[str, str] | None = None,
) -> Decision:
    """Decide what to do with one Engine.IO request (see the module docstring for the rules).

    ``forwarded`` must be true only when the request's peer signature verified.
    """
    if sid is None:
        return _SERVE_HANDSHAKE
    if method == "OPTIONS":
        return _SERVE_PREFLIGHT
    if sid in local_sids:
        return _SERVE_LOCAL
    if moved:
        target = moved.get(sid)
        if target is not None and view.is_live_member(target):
            return Decision(Action.FORWARD, "moved", target)
    if forwarded:
        return _SERVE_FORWARDED
    owner = view.directory_owner(sid)
    if owner is not None:
        if owner == view.self_url:
            return _REJECT_OWN
        if view.is_live_member(owner):
            return Decision(Action.FORWARD, "directory", owner)
        return _REJECT_DEAD
    if view.is_tombstoned(sid):
        return _REJECT_TOMBSTONE
    parts = parse_sid(keys, sid)
    if parts is None:
        return _REJECT_MALFORMED
    if parts.node_tag == view.self_tag:
        return _REJECT_OWN
    member = view.member_by_tag(parts.node_tag)
    if member is None:
        return _REJECT_UNKNOWN
    if not member.alive and not member.leaving:
        return _REJECT_DEAD
    if member.generation_tag is not None and member.generation_tag != parts.generation_tag:
        return _REJECT_RESTARTED
    return Decision(Action.FORWARD, "sid tag", member.url)
