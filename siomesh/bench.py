"""``siomesh bench``: mesh mode against sticky mode, side by side, in one run.

Scenarios (each started fresh on free loopback ports, stopped by pid afterwards):

* ``single``: one plain python-socketio node, no balancer;
* ``sticky-haproxy-cookie``: 3 plain nodes, HAProxy cookie stickiness (the socket.io docs'
  recommended setup; the baseline every ratio is computed against);
* ``sticky-nginx-iphash``: 3 plain nodes, nginx ``ip_hash``;
* ``plain-nginx-rr``: 3 plain nodes, nginx round-robin (expected: polling sessions fail);
* ``mesh-nginx-rr`` / ``mesh-haproxy-rr``: 3 SioMesh nodes, round-robin.

Workloads: ``polling``, ``upgrade`` (polling then WebSocket) and ``websocket``; each runs C
concurrent python-socketio clients that connect at once (a connect storm) and do R acked round
trips. Reported per cell: sessions ok/failed, round trips/s, p50/p99 latency, and each as a ratio
to the baseline cell of the same workload measured in the same run. Writes ``bench.json`` and
``bench.png`` under ``--out``.

It drives the real processes and balancers of the test harness (``tests/harness``), so it runs
from a source checkout; balancers that are not installed are skipped with a message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["main"]

BASELINE = "sticky-haproxy-cookie"
WORKLOADS: dict[str, tuple[str, ...]] = {
    "polling": ("polling",),
    "upgrade": ("polling", "websocket"),
    "websocket": ("websocket",),
}
# name -> (app, node count, balancer, template, target host)
SCENARIOS: dict[str, tuple[str, int, str | None, str | None, str]] = {
    "single": ("tests.apps.plain:app", 1, None, None, "127.0.0.1"),
    # aiohttp's cookie jar refuses cookies from IP-address hosts: a cookie-sticky client must
    # use a host name, or stickiness silently breaks (the very issue users report).
    BASELINE: ("tests.apps.plain:app", 3, "haproxy", "haproxy-sticky-cookie.cfg", "localhost"),
    "sticky-nginx-iphash": ("tests.apps.plain:app", 3, "nginx", "nginx-ip-hash.conf", "127.0.0.1"),
    "plain-nginx-rr": ("tests.apps.plain:app", 3, "nginx", None, "127.0.0.1"),
    "mesh-nginx-rr": ("tests.apps.echo:app", 3, "nginx", None, "127.0.0.1"),
    "mesh-haproxy-rr": ("tests.apps.echo:app", 3, "haproxy", None, "127.0.0.1"),
}


@dataclass
class Cell:
    scenario: str
    workload: str
    clients: int
    ok_sessions: int
    failed_sessions: int
    round_trips: int
    rps: float
    p50_ms: float
    p99_ms: float
    wall_s: float
    errors: list[str] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)


def _harness() -> Any:
    root = Path(__file__).resolve().parents[1]
    if not (root / "tests" / "harness" / "load.py").exists():
        raise SystemExit(
            "siomesh bench drives the test harness: run it from a source checkout "
            "(git clone, then ./scripts/test once, then .venv/bin/siomesh bench)"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import tests.harness.balancers as balancers
    import tests.harness.load as load
    import tests.harness.procs as procs

    return argparse.Namespace(balancers=balancers, load=load, procs=procs)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run_scenario(
    h: Any, name: str, workloads: list[str], clients: int, rounds: int, workdir: Path
) -> list[Cell]:
    app, count, balancer, template, host = SCENARIOS[name]
    if balancer is not None and h.balancers.binary_for(balancer) is None:
        _progress(f"  skipped {name}: {balancer} is not installed")
        return []
    cluster = h.procs.start_mesh(count, workdir / name, app=app, env={"ECHO_PING_INTERVAL": "25"})
    lb = None
    try:
        if balancer is not None:
            lb = h.balancers.start_balancer(
                balancer, cluster.addresses, workdir / f"{name}-lb", template=template
            )
            url = lb.url.replace("127.0.0.1", host)
        else:
            url = cluster.nodes[0].url
        cells = []
        for workload in workloads:
            started = time.monotonic()
            result = asyncio.run(
                h.load.run_load(
                    url,
                    clients=clients,
                    round_trips=rounds,
                    transports=WORKLOADS[workload],
                    connect_timeout=10.0,
                    call_timeout=10.0,
                    deadline=120.0,
                )
            )
            wall = time.monotonic() - started
            rps = result.completed_round_trips / result.wall_time if result.wall_time else 0.0
            cell = Cell(
                scenario=name,
                workload=workload,
                clients=clients,
                ok_sessions=clients - result.failed,
                failed_sessions=result.failed,
                round_trips=result.completed_round_trips,
                rps=rps,
                p50_ms=result.percentile(0.5) * 1000,
                p99_ms=result.percentile(0.99) * 1000,
                wall_s=wall,
                errors=result.errors[:3],
            )
            _progress(
                f"  {name:<22} {workload:<9} ok {cell.ok_sessions}/{clients} "
                f"{cell.rps:8.0f} rt/s  p50 {cell.p50_ms:6.1f} ms  p99 {cell.p99_ms:6.1f} ms"
            )
            cells.append(cell)
        return cells
    finally:
        if lb is not None:
            lb.stop()
        cluster.stop()


def _ratios(cells: list[Cell]) -> None:
    base = {c.workload: c for c in cells if c.scenario == BASELINE}
    for cell in cells:
        b = base.get(cell.workload)
        if b is None:
            continue
        cell.ratios = {
            "rps": cell.rps / b.rps if b.rps else math.nan,
            "p50": cell.p50_ms / b.p50_ms if b.p50_ms else math.nan,
            "p99": cell.p99_ms / b.p99_ms if b.p99_ms else math.nan,
        }


def _table(cells: list[Cell]) -> str:
    head = (
        f"{'scenario':<22} {'workload':<9} {'ok/failed':>10} {'rt/s':>8} {'x':>6} "
        f"{'p50 ms':>8} {'x':>6} {'p99 ms':>8} {'x':>6}"
    )
    lines = [head, "-" * len(head)]
    for c in cells:
        r = c.ratios
        lines.append(
            f"{c.scenario:<22} {c.workload:<9} {f'{c.ok_sessions}/{c.failed_sessions}':>10} "
            f"{c.rps:8.0f} {r.get('rps', math.nan):6.2f} {c.p50_ms:8.1f} "
            f"{r.get('p50', math.nan):6.2f} {c.p99_ms:8.1f} {r.get('p99', math.nan):6.2f}"
        )
    lines.append(f"x = ratio to {BASELINE} for the same workload, measured in this run")
    return "\n".join(lines)


def _chart(cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(c.workload for c in cells))
    scenarios = list(dict.fromkeys(c.scenario for c in cells))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(scenarios))
    for i, scenario in enumerate(scenarios):
        by = {c.workload: c for c in cells if c.scenario == scenario}
        xs = [j + i * width for j in range(len(workloads))]
        axes[0].bar(xs, [by[w].rps if w in by else 0 for w in workloads], width, label=scenario)
        axes[1].bar(xs, [by[w].p99_ms if w in by else 0 for w in workloads], width)
    for ax, title in zip(
        axes, ("round trips / s (higher is better)", "p99 ms (lower is better)"), strict=True
    ):
        ax.set_xticks([j + width * (len(scenarios) - 1) / 2 for j in range(len(workloads))])
        ax.set_xticklabels(workloads)
        ax.set_title(title)
    fig.legend(loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    """Run the benchmark described by the parsed ``siomesh bench`` arguments."""
    h = _harness()
    # clients of scenarios that are expected to fail leave sockets for the GC: not news
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    clients = args.clients or (12 if args.quick else 50)
    rounds = args.rounds or (3 if args.quick else 20)
    names = list(SCENARIOS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            print(
                f"siomesh bench: unknown scenario(s) {unknown}; known: {list(SCENARIOS)}",
                file=sys.stderr,
            )
            return 2
        if BASELINE not in names:
            names.insert(0, BASELINE)
    workloads = ["polling"] if args.quick else list(WORKLOADS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells: list[Cell] = []
    _progress(f"siomesh bench: {len(names)} scenarios x {workloads}, {clients} clients x {rounds}")
    with tempfile.TemporaryDirectory(prefix="siomesh-bench-") as tmp:
        for index, name in enumerate(names, start=1):
            _progress(f"[{index}/{len(names)}] {name}")
            cells.extend(_run_scenario(h, name, workloads, clients, rounds, Path(tmp)))
    _ratios(cells)
    table = _table(cells)
    print(table)
    report = {
        "clients": clients,
        "round_trips": rounds,
        "baseline": BASELINE,
        "cells": [asdict(c) for c in cells],
    }
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "bench.txt").write_text(table + "\n")
    _chart(cells, out / "bench.png")
    print(f"wrote {out / 'bench.json'}, {out / 'bench.txt'}, {out / 'bench.png'}")
    return 0
