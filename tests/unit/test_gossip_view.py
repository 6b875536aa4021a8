"""GossipCluster (the routing view over the gossip node) and TrackedSockets, in-process."""

from __future__ import annotations

import random
from typing import Any

from siomesh.engine import TrackedSockets
from siomesh.protocol.membership import GossipConfig
from siomesh.protocol.messages import MemberUpdate, Push, State
from siomesh.protocol.node import Node
from siomesh.runtime.gossip import GossipCluster
from siomesh.sid import SidKeys, generation_tag, node_tag

KEYS = SidKeys.from_secret("gossip-view-secret-0123456789")
ME = "http://127.0.0.1:7001"
SEED = "http://127.0.0.1:7002"
OTHER = "http://127.0.0.1:7003"


def make() -> tuple[Node, GossipCluster]:
    node = Node(ME, ME, 1, GossipConfig.lan(), random.Random(1), seeds=[SEED])
    return node, GossipCluster(node, KEYS, [SEED, ME])


def learn(node: Node, url: str, generation: int, state: State) -> None:
    update = MemberUpdate(url, url, generation, 0, state, "")
    node.receive(url, Push(url, (), (update,)), now=1.0)


def test_unknown_seed_counts_as_live_until_gossip_knows_it() -> None:
    _node, view = make()
    ref = view.member_by_tag(node_tag(KEYS, SEED))
    assert ref is not None and ref.alive and ref.generation_tag is None
    assert view.is_live_member(SEED)
    assert view.live_peers() == [SEED]
    assert view.member_by_tag(node_tag(KEYS, OTHER)) is None
    assert not view.is_live_member(ME)


def test_member_state_and_generation_come_from_gossip() -> None:
    node, view = make()
    learn(node, OTHER, 7, State.ALIVE)
    ref = view.member_by_tag(node_tag(KEYS, OTHER))
    assert ref is not None and ref.alive and ref.generation_tag == generation_tag(KEYS, 7)
    assert OTHER in view.live_peers()
    learn(node, OTHER, 7, State.DEAD)
    ref = view.member_by_tag(node_tag(KEYS, OTHER))
    assert ref is not None and not ref.alive
    assert not view.is_live_member(OTHER)
    assert OTHER not in view.live_peers()
    assert view.member_counts()["dead"] == 1


def test_room_owners_only_when_asked_for() -> None:
    node, view = make()
    assert view.room_owners("/", "lobby") is None
    smart = GossipCluster(node, KEYS, [SEED], room_directory=True)
    node.add_local("r:/:lobby:abc")
    assert smart.room_owners("/", "lobby") == {ME}


def test_tracked_sockets_report_changes() -> None:
    added: list[tuple[str, Any]] = []
    also_added: list[str] = []
    removed: list[str] = []
    sockets: dict[str, Any] = TrackedSockets(
        {"old": 0},
        [lambda sid, socket: added.append((sid, socket)), lambda sid, _: also_added.append(sid)],
        [removed.append],
    )
    assert added == [("old", 0)]  # sessions present before tracking are reported too
    sockets["a"] = 1
    sockets["a"] = 2  # replacing is not a new session
    sockets["b"] = 3
    del sockets["a"]
    sockets.pop("b")
    sockets.pop("zzz", None)
    assert added == [("old", 0), ("a", 1), ("b", 3)]
    assert also_added == ["old", "a", "b"]
    assert removed == ["a", "b"]
    assert dict(sockets) == {"old": 0}
