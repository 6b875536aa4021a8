"""Cluster scenarios on virtual time; every run is deterministic from its seed."""

from __future__ import annotations

from siomesh.protocol.membership import GossipConfig
from siomesh.protocol.messages import State
from siomesh.testing import Simulator

CFG = GossipConfig()


def detection_bound(n: int, cfg: GossipConfig = CFG) -> float:
    """Crash to everyone-knows-DEAD: a probe lap is short at these sizes, so two probe periods,
    the full suspicion timeout, and a second of dissemination and scheduling slack."""
    start, _ = cfg.suspicion_bounds(n)
    return 2 * cfg.probe_interval + start + 1.0


def test_fifty_nodes_converge_after_joining_through_one_seed() -> None:
    sim = Simulator(50, seed=1)
    took = sim.run_until(sim.membership_converged, max_time=10)
    assert took is not None, sim.membership_disagreements()
    assert took < 3.0


def test_same_seed_same_run() -> None:
    def trace(seed: int) -> tuple[float | None, int]:
        sim = Simulator(10, seed=seed, loss=0.05)
        took = sim.run_until(sim.membership_converged, max_time=10, check_every=0.01)
        sim.run_for(5)
        return took, sim.network.total_bytes()

    assert trace(7) == trace(7)


def test_crash_is_detected_by_all_within_bound_without_false_positives_under_loss() -> None:
    sim = Simulator(20, seed=2, loss=0.05)
    assert sim.run_until(sim.membership_converged, max_time=10) is not None
    sim.run_for(20)  # 20 s of 5 % loss: nobody may be declared dead
    assert sim.membership_converged(), sim.membership_disagreements()
    sim.crash("n5")
    took = sim.run_until(lambda: sim.all_see_dead("n5"), max_time=30)
    assert took is not None and took <= detection_bound(20), took
    sim.run_for(5)
    dead_or_suspect = {
        (n.node_id, m.node_id)
        for n in sim.nodes()
        for m in n.members()
        if m.node_id != "n5" and m.state != State.ALIVE
    }
    assert not dead_or_suspect


def test_partition_then_heal_converges() -> None:
    sim = Simulator(12, seed=3)
    assert sim.run_until(sim.membership_converged, max_time=10) is not None
    left = [f"n{i}" for i in range(6)]
    sim.partition(left)
    sids = [sim.create_sid(f"n{i}") for i in range(12)]
    assert (
        sim.run_until(
            lambda: (
                all(sim.all_see_dead(f"n{i}") is False for i in range(12))
                and all(
                    n.member(f"n{j}").state != State.ALIVE  # type: ignore[union-attr]
                    for n in sim.nodes()
                    for j in range(12)
                    if (n.node_id in left) != (f"n{j}" in left) and n.member(f"n{j}") is not None
                )
            ),
            max_time=30,
        )
        is not None
    )
    sim.heal()
    took = sim.run_until(
        lambda: sim.membership_converged() and all(sim.known_everywhere(s) for s in sids),
        max_time=30,
    )
    assert took is not None, sim.membership_disagreements()
    assert sim.owner_violations() == []


def test_restart_with_new_generation_replaces_old_sessions() -> None:
    sim = Simulator(6, seed=4)
    assert sim.run_until(sim.membership_converged, max_time=10) is not None
    old = [sim.create_sid("n2") for _ in range(20)]
    assert sim.run_until(lambda: all(sim.known_everywhere(s) for s in old), 5) is not None
    sim.restart("n2")  # same URL, generation 2
    new = sim.create_sid("n2")
    took = sim.run_until(
        lambda: sim.membership_converged() and not sim.stale_sids() and sim.known_everywhere(new),
        max_time=10,
    )
    assert took is not None, (sim.stale_sids()[:3], sim.membership_disagreements())
    assert all(n.member("n2").generation == 2 for n in sim.nodes())  # type: ignore[union-attr]
    assert sim.owner_violations() == []


def test_thousand_sids_per_second_over_ten_nodes_are_known_everywhere() -> None:
    sim = Simulator(10, seed=5)
    assert sim.run_until(sim.membership_converged, max_time=10) is not None
    t0 = sim.now
    for k in range(2000):  # 2 s at 1,000 sids/s, round robin over the nodes
        sim.at(t0 + k / 1000, lambda k=k: sim.create_sid(f"n{k % 10}"))
    sim.run_for(2.0)
    bound = 1.0  # several gossip intervals; far below anti-entropy's 2 s
    took = sim.run_until(lambda: all(sim.known_everywhere(s) for s in sim.sid_created), bound)
    assert took is not None
    assert len(sim.sid_created) == 2000
    assert sim.owner_violations() == []


def test_graceful_leave_is_seen_at_once() -> None:
    sim = Simulator(8, seed=6)
    assert sim.run_until(sim.membership_converged, max_time=10) is not None
    sim.leave("n3")
    took = sim.run_until(lambda: sim.all_see_dead("n3"), max_time=5, check_every=0.01)
    assert took is not None and took < 0.1


def test_a_cut_between_two_nodes_is_seen_as_indirect_reach_and_cleared_by_the_heal() -> None:
    """n0 and n1 cannot reach each other; n2 reaches both. SWIM keeps both alive through
    indirect probes, and each learns it reaches the other only through a helper (what a
    node's forwarding uses to go via a third node at once); the heal clears it."""
    sim = Simulator(3, seed=5)
    assert sim.run_until(sim.membership_converged, max_time=10) is not None
    n0, n1, n2 = (sim.node(f"n{i}") for i in range(3))
    assert not any(n.reached_indirectly() for n in sim.nodes())
    sim.cut("n0", "n1")

    def each_knows() -> bool:
        return n0.reached_indirectly() == [n1.url] and n1.reached_indirectly() == [n0.url]

    took = sim.run_until(each_knows, max_time=10, check_every=0.01)
    assert took is not None and took < 3.0, took
    sim.run_for(10)
    assert n0.reached_indirectly() == [n1.url] and n1.reached_indirectly() == [n0.url]
    assert n2.reached_indirectly() == []
    assert sim.membership_converged(), sim.membership_disagreements()  # nobody suspected for long
    sim.heal()
    took = sim.run_until(
        lambda: not any(n.reached_indirectly() for n in sim.nodes()), max_time=10, check_every=0.01
    )
    assert took is not None and took < 3.0, took
