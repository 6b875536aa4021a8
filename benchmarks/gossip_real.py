"""Gossip with real processes: time until a new sid is known by every node, and crash detection.

Starts N real uvicorn nodes (each seeded with node 0 only), then repeatedly makes a session on
a random node and polls every node's ``/_siomesh/status`` until all of them count it; then kills
one node with SIGKILL and measures until every survivor reports it dead. Prints p50/p99.
Loopback only; every process is ended by pid. ``--quick`` for a small run.

    .venv/bin/python benchmarks/gossip_real.py --nodes 3,10 --samples 20
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.ports import LOOPBACK, free_ports  # noqa: E402
from tests.harness.procs import (  # noqa: E402
    REPO_ROOT,
    TEST_SECRET,
    Proc,
    http_get,
    node_argv,
    start_process,
    stop_all,
    wait_http,
)


def status(url: str) -> dict[str, object]:
    code, body = http_get(url + "/_siomesh/status", timeout=5.0)
    assert code == 200
    data: dict[str, object] = json.loads(body)
    return data


def owner_sessions(url: str, owner: str) -> int:
    for member in status(url)["members"]:  # type: ignore[attr-defined]
        if member["url"] == owner:
            return int(member["sessions"])
    return -1


def run(n: int, samples: int, workdir: Path) -> dict[str, float]:
    import os

    ports = free_ports(n)
    urls = [f"http://{LOOPBACK}:{p}" for p in ports]
    procs: list[Proc] = []
    try:
        for i, port in enumerate(ports):
            env = dict(os.environ)
            env.update(
                {
                    "SIOMESH_NODE_URL": urls[i],
                    "SIOMESH_PEERS": urls[0],
                    "SIOMESH_SECRET": TEST_SECRET,
                    "PYTHONPATH": str(REPO_ROOT),
                }
            )
            procs.append(
                start_process(
                    f"n{i}",
                    node_argv("tests.apps.echo:app", port),
                    log_path=workdir / f"n{i}.log",
                    env=env,
                )
            )
        for url, proc in zip(urls, procs, strict=True):
            wait_http(url + "/_siomesh/health", timeout=60, procs=[proc])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(
                sum(m["state"] == "alive" for m in status(u)["members"]) == n  # type: ignore[attr-defined]
                for u in urls
            ):
                break
            time.sleep(0.1)
        spread: list[float] = []
        rng = random.Random(n)
        for _ in range(samples):
            owner = rng.choice(urls)
            before = {u: owner_sessions(u, owner) for u in urls}
            code, _ = http_get(owner + "/socket.io/?EIO=4&transport=polling")
            assert code == 200
            t0 = time.monotonic()
            pending = set(urls)
            while pending and time.monotonic() - t0 < 10:
                pending = {u for u in pending if owner_sessions(u, owner) <= before[u]}
                if pending:
                    time.sleep(0.01)
            spread.append(time.monotonic() - t0)
        victim = n - 1
        procs[victim].kill()
        t0 = time.monotonic()
        survivors = urls[:victim]
        while time.monotonic() - t0 < 30:
            states = [
                {m["url"]: m["state"] for m in status(u)["members"]}  # type: ignore[attr-defined]
                for u in survivors
            ]
            if all(s.get(urls[victim]) == "dead" for s in states):
                break
            time.sleep(0.05)
        detect = time.monotonic() - t0
        spread.sort()
        return {
            "nodes": n,
            "spread_p50_ms": statistics.median(spread) * 1000,
            "spread_p99_ms": spread[min(len(spread) - 1, int(0.99 * len(spread)))] * 1000,
            "detection_s": detect,
        }
    finally:
        stop_all(procs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="3,10", help="comma-separated cluster sizes")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [3] if args.quick else [int(x) for x in args.nodes.split(",")]
    samples = 5 if args.quick else args.samples
    print("nodes  sid-known-by-all p50   p99      crash detected by all")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            r = run(n, samples, Path(tmp))
            print(
                f"{n:5d}  {r['spread_p50_ms']:10.0f} ms {r['spread_p99_ms']:7.0f} ms "
                f"{r['detection_s']:10.2f} s"
            )
    print("(includes the status-polling delay of this script: ~10 ms per round over all nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
