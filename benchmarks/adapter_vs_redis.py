"""Broadcast fan-out: the siomesh adapter (peer-to-peer HTTP) against python-socketio's
AsyncRedisManager on a real redis-server, side by side in one run.

Same app (tests/apps/adapter_app.py), same 3 uvicorn nodes on loopback, same clients (spread
evenly over the nodes, WebSocket). Two phases per mode:

* latency: one sender emits ``paced`` broadcasts at a fixed, light rate; p50/p99 of
  (client receive time - server emit time), both read from CLOCK_MONOTONIC on this machine;
* throughput: one sender per node emits ``burst`` broadcasts as fast as it can; messages
  delivered to clients per second, from the first emit to the last delivery.

Prints each figure and the ratio mesh / redis. ``--quick`` runs a small load (~20 s).
Usage: .venv/bin/python benchmarks/adapter_vs_redis.py [--quick] [--clients N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import socketio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.apps.adapter_cluster import AdapterCluster, RedisServer  # noqa: E402


@dataclass
class Result:
    p50_ms: float
    p99_ms: float
    throughput: float
    delivered: int
    expected: int


class BenchClient:
    def __init__(self, url: str) -> None:
        self.url = url
        self.sio = socketio.AsyncClient(reconnection=False)
        self.latencies: list[float] = []
        self.count = 0
        self.last = 0.0
        self.sio.on("b", self._on)

    async def _on(self, item: list[Any]) -> None:
        now = time.monotonic()
        self.latencies.append(now - float(item[0]))
        self.count += 1
        self.last = now

    def reset(self) -> None:
        self.latencies.clear()
        self.count = 0
        self.last = 0.0


async def _wait_for(clients: list[BenchClient], total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sum(c.count for c in clients) < total:
        await asyncio.sleep(0.02)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run_mode(
    cluster: AdapterCluster, clients_per_node: int, paced: int, burst: int
) -> Result:
    urls = [n.url for n in cluster.nodes]
    clients = [BenchClient(u) for u in urls * clients_per_node]
    await asyncio.gather(*(c.sio.connect(c.url, transports=["websocket"]) for c in clients))
    drivers = clients[: len(urls)]  # one per node
    try:
        # warm-up: connections, pools, JIT-free but cache-warm paths
        await drivers[0].sio.call("bench", {"count": 20}, timeout=30)
        await _wait_for(clients, 20 * len(clients), 10)
        for c in clients:
            c.reset()
        # latency at a light, fixed rate from one node
        await drivers[0].sio.call("bench", {"count": paced, "interval": 0.005}, timeout=120)
        await _wait_for(clients, paced * len(clients), 20)
        latencies = [v for c in clients for v in c.latencies]
        for c in clients:
            c.reset()
        # throughput: every node emits as fast as it can
        started = time.monotonic()
        await asyncio.gather(*(d.sio.call("bench", {"count": burst}, timeout=300) for d in drivers))
        expected = burst * len(drivers) * len(clients)
        await _wait_for(clients, expected, 120)
        delivered = sum(c.count for c in clients)
        ended = max(c.last for c in clients) or time.monotonic()
        return Result(
            p50_ms=_pct(latencies, 0.50),
            p99_ms=_pct(latencies, 0.99),
            throughput=delivered / max(ended - started, 1e-9),
            delivered=delivered,
            expected=expected,
        )
    finally:
        await asyncio.gather(*(c.sio.disconnect() for c in clients), return_exceptions=True)


async def main_async(args: argparse.Namespace) -> int:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        print("redis-server is not installed", file=sys.stderr)
        return 2
    results: dict[str, Result] = {}
    with RedisServer(binary) as redis:
        for mode in ("mesh", "redis"):
            env = {"ADAPTER_REDIS_URL": redis.url} if mode == "redis" else {}
            with AdapterCluster(3, env=env) as cluster:
                results[mode] = await run_mode(
                    cluster, args.clients_per_node, args.paced, args.burst
                )
    mesh, redis_r = results["mesh"], results["redis"]
    clients = 3 * args.clients_per_node
    print(
        f"3 nodes, {clients} clients; latency: {args.paced} broadcasts at 200/s from one node; "
        f"throughput: {args.burst} broadcasts from each node at full speed"
    )
    print(f"{'':24}{'mesh':>12}{'redis':>12}{'mesh/redis':>12}")
    rows = [
        ("p50 latency (ms)", mesh.p50_ms, redis_r.p50_ms),
        ("p99 latency (ms)", mesh.p99_ms, redis_r.p99_ms),
        ("delivered msgs/s", mesh.throughput, redis_r.throughput),
    ]
    for name, m, r in rows:
        print(f"{name:24}{m:12.1f}{r:12.1f}{m / r:12.2f}")
    done = [f"{r.delivered}/{r.expected}" for r in (mesh, redis_r)]
    print(f"{'delivered/expected':24}{done[0]:>14}{done[1]:>14}")
    return 0 if mesh.delivered == mesh.expected and redis_r.delivered == redis_r.expected else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small load, about 20 s")
    parser.add_argument("--clients-per-node", type=int, default=None)
    args = parser.parse_args()
    # the Engine.IO client logs every disconnect at error level ("packet queue is empty")
    logging.getLogger("engineio.client").setLevel(logging.CRITICAL)
    if args.quick:
        args.clients_per_node = args.clients_per_node or 2
        args.paced, args.burst = 200, 500
    else:
        args.clients_per_node = args.clients_per_node or 4
        args.paced, args.burst = 1000, 3000
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
