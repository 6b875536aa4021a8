"""Table-driven tests of every routing rule (design.md, "Routing rules")."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from siomesh.cluster import MemberRef, StaticCluster
from siomesh.routing import Action, decide
from siomesh.sid import SidKeys, generation_tag, make_sid, node_tag

KEYS = SidKeys.from_secret("routing-secret-0123456789")
SELF = "http://127.0.0.1:8001"
PEER = "http://127.0.0.1:8002"
DEAD = "http://127.0.0.1:8003"
STRANGER = "http://127.0.0.1:9999"


@dataclass
class View:
    """A cluster view with a directory and member states, as gossip will provide."""

    members: dict[str, MemberRef] = field(default_factory=dict)
    directory: dict[str, str] = field(default_factory=dict)
    tombstones: set[str] = field(default_factory=set)

    @property
    def self_url(self) -> str:
        return SELF

    @property
    def self_tag(self) -> str:
        return node_tag(KEYS, SELF)

    def member_by_tag(self, tag: str) -> MemberRef | None:
        for url, ref in self.members.items():
            if node_tag(KEYS, url) == tag:
                return ref
        return None

    def directory_owner(self, sid: str) -> str | None:
        return self.directory.get(sid)

    def is_tombstoned(self, sid: str) -> bool:
        return sid in self.tombstones

    def is_live_member(self, url: str) -> bool:
        ref = self.members.get(url)
        return ref is not None and ref.alive

    def live_peers(self) -> list[str]:
        return [u for u, r in self.members.items() if r.alive]

    def reached_indirectly(self, url: str) -> bool:
        return False


#: seeded: the sids appear in the test ids, which must be the same in every pytest-xdist worker
_RANDOM = random.Random(14)


def sid_of(url: str, generation: int = 1) -> str:
    return make_sid(KEYS, url, generation, _RANDOM.randbytes(12))


def view() -> View:
    return View(
        members={
            PEER: MemberRef(PEER, True, generation_tag(KEYS, 1)),
            DEAD: MemberRef(DEAD, False, generation_tag(KEYS, 1)),
        }
    )


PEER_SID = sid_of(PEER)
OLD_GEN_SID = sid_of(PEER, generation=0)
DEAD_SID = sid_of(DEAD)
SELF_SID = sid_of(SELF)
STRANGER_SID = sid_of(STRANGER)
LOCAL_SID = sid_of(SELF)
FOREIGN_TAGLESS = "Xx2kQ9dOj_w8TqVZAAAB"


@pytest.mark.parametrize(
    ("method", "sid", "forwarded", "action", "target", "reason"),
    [
        ("GET", None, False, Action.SERVE, None, "no sid"),
        ("OPTIONS", PEER_SID, False, Action.SERVE, None, "preflight"),
        ("GET", LOCAL_SID, False, Action.SERVE, None, "local sid"),
        ("POST", LOCAL_SID, True, Action.SERVE, None, "local sid"),
        ("GET", PEER_SID, True, Action.SERVE, None, "already forwarded"),
        ("GET", PEER_SID, False, Action.FORWARD, PEER, "sid tag"),
        ("POST", PEER_SID, False, Action.FORWARD, PEER, "sid tag"),
        ("GET", OLD_GEN_SID, False, Action.REJECT, None, "owner restarted"),
        ("GET", DEAD_SID, False, Action.REJECT, None, "owner is dead"),
        ("GET", SELF_SID, False, Action.REJECT, None, "own sid no longer live"),
        ("GET", STRANGER_SID, False, Action.REJECT, None, "owner is not a member"),
        ("GET", FOREIGN_TAGLESS, False, Action.REJECT, None, "malformed or foreign sid"),
        ("GET", "", False, Action.REJECT, None, "malformed or foreign sid"),
        ("GET", "../../etc/passwd", False, Action.REJECT, None, "malformed or foreign sid"),
    ],
)
def test_rules(
    method: str,
    sid: str | None,
    forwarded: bool,
    action: Action,
    target: str | None,
    reason: str,
) -> None:
    decision = decide(
        method=method,
        sid=sid,
        local_sids={LOCAL_SID},
        forwarded=forwarded,
        view=view(),
        keys=KEYS,
    )
    assert (decision.action, decision.target, decision.reason) == (action, target, reason)


def test_directory_entry_beats_tag() -> None:
    v = view()
    v.directory[FOREIGN_TAGLESS] = PEER
    d = decide(method="GET", sid=FOREIGN_TAGLESS, local_sids=(), forwarded=False, view=v, keys=KEYS)
    assert (d.action, d.target) == (Action.FORWARD, PEER)


def test_directory_owner_dead_rejects() -> None:
    v = view()
    v.directory[FOREIGN_TAGLESS] = DEAD
    d = decide(method="GET", sid=FOREIGN_TAGLESS, local_sids=(), forwarded=False, view=v, keys=KEYS)
    assert d.action is Action.REJECT


def test_tombstone_rejects_even_with_live_tag() -> None:
    v = view()
    v.tombstones.add(PEER_SID)
    d = decide(method="GET", sid=PEER_SID, local_sids=(), forwarded=False, view=v, keys=KEYS)
    assert (d.action, d.reason) == (Action.REJECT, "sid closed")


def test_static_cluster_forwards_only_to_configured_members() -> None:
    cluster = StaticCluster(SELF, (SELF, PEER), KEYS)
    forward = decide(
        method="GET", sid=PEER_SID, local_sids=(), forwarded=False, view=cluster, keys=KEYS
    )
    assert (forward.action, forward.target) == (Action.FORWARD, PEER)
    stranger = decide(
        method="GET", sid=STRANGER_SID, local_sids=(), forwarded=False, view=cluster, keys=KEYS
    )
    assert stranger.action is Action.REJECT
    assert cluster.live_peers() == [PEER]
    assert not cluster.is_live_member(SELF)
