"""Gossip figures from the deterministic simulator (virtual time; CPU speed does not matter).

Prints:
  * time until a new sid is known by every node (p50 / p99), for 3, 10 and 50 nodes;
  * failure-detection time and false-positive rate at 0 %, 1 % and 5 % message loss;
  * gossip bytes/s per node, idle and at 1,000 new sessions/s over 10 nodes;
  * directory memory per entry at 1,000,000 entries (tracemalloc);
  * the detection bounds of memberlist's LAN preset and the Node cluster adapter, for comparison.

Usage: python benchmarks/gossip_sim.py [--quick] [--seed N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from siomesh.protocol.directory import Directory, engineio_key
from siomesh.protocol.membership import GossipConfig
from siomesh.testing import Simulator

CFG = GossipConfig.lan()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]


def sid_spread(n: int, samples: int, seed: int) -> tuple[float, float]:
    sim = Simulator(n, seed=seed)
    assert sim.run_until(sim.membership_converged, max_time=30) is not None
    sim.run_for(3)
    pending: dict[str, float] = {}
    done: list[float] = []
    t0 = sim.now
    for k in range(samples):
        node = f"n{sim.rng.randrange(n)}"
        sim.at(t0 + k * 0.25, lambda node=node: pending.setdefault(sim.create_sid(node), sim.now))

    def poll() -> bool:
        for sid, created in list(pending.items()):
            if sim.known_everywhere(sid):
                done.append(sim.now - created)
                del pending[sid]
        return len(done) == samples

    assert sim.run_until(poll, max_time=samples * 0.25 + 30, check_every=0.005) is not None
    return pct(done, 50), pct(done, 99)


def detection(loss: float, n: int, trials: int, soak: float, seed: int) -> tuple[float, float, int]:
    """(median detection s, worst detection s, false DEAD declarations during the soaks)."""
    times: list[float] = []
    false_dead = 0
    for t in range(trials):
        sim = Simulator(n, seed=seed + t, loss=loss)
        assert sim.run_until(sim.membership_converged, max_time=30) is not None
        seen: set[tuple[str, str, int]] = set()

        def watch(sim: Simulator = sim, seen: set[tuple[str, str, int]] = seen) -> bool:
            for node in sim.nodes():
                for m in node.members():
                    if not m.live and m.node_id in sim.running:
                        seen.add((node.node_id, m.node_id, m.incarnation))
            return False

        sim.run_until(watch, max_time=soak, check_every=0.1)
        false_dead += len(seen)
        victim = f"n{1 + t % (n - 1)}"
        sim.crash(victim)
        took = sim.run_until(lambda sim=sim, v=victim: sim.all_see_dead(v), max_time=60)
        assert took is not None
        times.append(took)
    return statistics.median(times), max(times), false_dead


def bandwidth(rate: int, n: int, seconds: float, seed: int) -> float:
    sim = Simulator(n, seed=seed)
    assert sim.run_until(sim.membership_converged, max_time=30) is not None
    sim.run_for(3)
    before = sim.network.total_bytes()
    t0 = sim.now
    for k in range(int(rate * seconds)):
        sim.at(t0 + k / rate, lambda k=k: sim.create_sid(f"n{k % n}"))
    sim.run_for(seconds)
    return (sim.network.total_bytes() - before) / seconds / n


def memory_per_entry(entries: int, origins: int = 10) -> float:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    d = Directory("me", 1)
    per = entries // origins
    for o in range(origins):
        src = Directory(f"node-{o}", 1)
        for i in range(per):
            src.set(engineio_key(f"{o:02d}{i:018d}"))  # 20-character sids, as engine.io makes
        d.apply(src.delta({}, 10**12), 0.0)
        del src
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert d.entry_count() == per * origins
    return used / (per * origins)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (about 30 s)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    q = a.quick
    wall = time.perf_counter()
    print(
        f"siomesh gossip, GossipConfig.lan(): probe {CFG.probe_interval}s/"
        f"{CFG.probe_timeout}s, gossip {CFG.gossip_interval}s x{CFG.gossip_fanout}, "
        f"anti-entropy {CFG.anti_entropy_interval}s, suspicion x{CFG.suspicion_mult}"
        f"->x{CFG.suspicion_min_mult}; 1-2 ms links; virtual time\n"
    )

    print("new sid known by all nodes")
    for n in (3, 10, 50):
        p50, p99 = sid_spread(n, 40 if q else 200, a.seed)
        print(f"  {n:3d} nodes: p50 {p50 * 1000:6.0f} ms   p99 {p99 * 1000:6.0f} ms")

    n_det = 10
    trials, soak = (3, 30.0) if q else (10, 120.0)
    print(f"\nfailure detection, {n_det} nodes, {trials} crashes, {soak:.0f} s soak each")
    for loss in (0.0, 0.01, 0.05):
        med, worst, fp = detection(loss, n_det, trials, soak, a.seed)
        pairs_min = trials * soak / 60 * n_det * (n_det - 1)
        print(
            f"  loss {loss:4.0%}: detection median {med:4.1f} s, worst {worst:4.1f} s; "
            f"false DEAD {fp} ({fp / pairs_min:.4f} per observer-target-minute)"
        )

    print("\ngossip bytes/s per node, 10 nodes")
    idle = bandwidth(0, 10, 5.0, a.seed)
    busy = bandwidth(1000, 10, 3.0 if q else 10.0, a.seed)
    print(f"  idle: {idle / 1000:7.1f} kB/s   at 1,000 new sessions/s: {busy / 1000:7.1f} kB/s")

    entries = 200_000 if q else 1_000_000
    print(
        f"\ndirectory memory at {entries:,} entries (10 origins, tracemalloc): "
        f"{memory_per_entry(entries):.0f} bytes/entry"
    )

    print("\ndetection bounds for comparison (crash -> declared dead, no confirmations)")
    print(
        "   N   siomesh lan (probe + susp.)   memberlist LAN (1 s + 4*max(1,log10 N) s)"
        "   Node cluster adapter"
    )
    for n in (3, 10, 50):
        start, low = CFG.suspicion_bounds(n)
        ml = 1.0 + 4 * max(1.0, math.log10(n)) * 1.0
        print(
            f"  {n:3d}   {CFG.probe_interval + start:5.1f} s (min {CFG.probe_interval + low:.1f})"
            f"              {ml:5.1f} s                                   10.0 s timeout"
        )
    print(f"\n(wall time {time.perf_counter() - wall:.1f} s)")


if __name__ == "__main__":
    main()
