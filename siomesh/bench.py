"""``siomesh bench``: mesh mode against sticky mode, side by side, in one run.

Three scenarios (``--scenario``; docs/benchmark.md shows the commands and explains each column):

* ``roundtrip`` (the default): acked round trips through every setup below;
* ``scale``: N clients in one room, K room broadcasts: 3 SioMesh nodes behind nginx
  round-robin against 3 plain nodes on ``AsyncRedisManager`` + redis-server behind HAProxy
  cookie stickiness (:mod:`siomesh.benchkit.broadcasts`);
* ``latency``: room broadcast latency and burst rate, the mesh adapter against
  ``AsyncRedisManager`` + redis-server (:mod:`siomesh.benchkit.broadcasts`);
* ``connects``: connect storms through nginx round-robin (python-socketio and npm clients):
  lost CONNECTs, connect handler runs, relayed WebSockets and takeovers, and polling-only
  connect time against sticky (:mod:`siomesh.benchkit.connects`).

Setups of ``roundtrip`` (each started fresh on free loopback ports, stopped by pid afterwards):

* ``single``: one plain python-socketio node, no balancer;
* ``sticky-haproxy-cookie``: 3 plain nodes, HAProxy cookie stickiness (the socket.io docs'
  recommended setup; the baseline every ratio is computed against);
* ``sticky-nginx-iphash``: 3 plain nodes, nginx ``ip_hash``;
* ``plain-nginx-rr``: 3 plain nodes, nginx round-robin (expected: polling sessions fail);
* ``mesh-nginx-rr`` / ``mesh-haproxy-rr``: 3 SioMesh nodes, round-robin.

Workloads: ``polling``, ``upgrade`` (polling then WebSocket) and ``websocket``; each runs C
concurrent python-socketio clients that connect at once (a connect storm) and do R acked round
trips. Reported per cell: sessions ok/failed, round trips/s, p50/p99 latency, and each as a ratio
to the baseline cell of the same workload measured in the same run. Writes ``bench.json``,
``bench.txt`` and (when matplotlib is installed: the ``bench`` extra) ``bench.png`` under
``--out``.

It drives real processes and balancers (:mod:`siomesh.benchkit`, shipped with the package, so it
runs from an install); binaries that are not installed are skipped with a message.
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
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "main"]

SCENARIO_KINDS = ("roundtrip", "scale", "latency", "connects", "rolling")

BASELINE = "sticky-haproxy-cookie"
WORKLOADS: dict[str, tuple[str, ...]] = {
    "polling": ("polling",),
    "upgrade": ("polling", "websocket"),
    "websocket": ("websocket",),
}
PLAIN_APP = "siomesh.benchkit.apps.plain:app"
MESH_APP = "siomesh.benchkit.apps.echo:app"
#: template marker: the owner-aware config of :mod:`siomesh.owner_routing`
OWNER = "owner"
# name -> (app, node count, balancer, template, target host)
SCENARIOS: dict[str, tuple[str, int, str | None, str | None, str]] = {
    "single": (PLAIN_APP, 1, None, None, "127.0.0.1"),
    # aiohttp's cookie jar refuses cookies from IP-address hosts: a cookie-sticky client must
    # use a host name, or stickiness silently breaks (the very issue users report).
    BASELINE: (PLAIN_APP, 3, "haproxy", "haproxy-sticky-cookie.cfg", "localhost"),
    "sticky-nginx-iphash": (PLAIN_APP, 3, "nginx", "nginx-ip-hash.conf", "127.0.0.1"),
    "plain-nginx-rr": (PLAIN_APP, 3, "nginx", None, "127.0.0.1"),
    "mesh-nginx-rr": (MESH_APP, 3, "nginx", None, "127.0.0.1"),
    "mesh-haproxy-rr": (MESH_APP, 3, "haproxy", None, "127.0.0.1"),
    # owner-aware configs (``siomesh balancer``): each request goes to the sid's owner
    "mesh-nginx-owner": (MESH_APP, 3, "nginx", OWNER, "127.0.0.1"),
    "mesh-haproxy-owner": (MESH_APP, 3, "haproxy", OWNER, "127.0.0.1"),
    # Caddy, round-robin and owner-aware: only with --only (the default run stays as long)
    "mesh-caddy-rr": (MESH_APP, 3, "caddy", None, "127.0.0.1"),
    "mesh-caddy-owner": (MESH_APP, 3, "caddy", OWNER, "127.0.0.1"),
}
#: Setups that run only when ``--only`` names them.
ON_REQUEST = frozenset({"mesh-caddy-rr", "mesh-caddy-owner"})
#: Setups behind plain round-robin, whose CPU figure gives the price of a forward (c).
ROUND_ROBIN = ("mesh-nginx-rr", "mesh-haproxy-rr", "mesh-caddy-rr")


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
    #: CPU seconds (user + system, every node process, from /proc) per 1,000 round trips
    cpu_per_1k: float = math.nan
    #: the nodes' forwarded requests during the workload
    forwarded: int = 0
    errors: list[str] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run_scenario(
    name: str, workloads: list[str], clients: int, rounds: int, workdir: Path
) -> list[Cell]:
    from .benchkit import balancers, load, procs

    app, count, balancer, template, host = SCENARIOS[name]
    if balancer is not None and balancers.binary_for(balancer) is None:
        _progress(f"  skipped {name}: {balancer} is not installed")
        return []
    cluster = procs.start_mesh(count, workdir / name, app=app, env={"ECHO_PING_INTERVAL": "25"})
    lb = None
    try:
        if balancer is not None:
            lb = balancers.start_balancer(
                balancer,
                cluster.addresses,
                workdir / f"{name}-lb",
                template=None if template == OWNER else template,
                owner_secret=procs.TEST_SECRET if template == OWNER else None,
            )
            url = lb.url.replace("127.0.0.1", host)
        else:
            url = cluster.nodes[0].url
        cells = []
        mesh = app == MESH_APP
        for workload in workloads:
            cpu_before = _cpu(cluster)
            forwarded_before = cluster.total("forwarded") if mesh else 0
            frames_before = cluster.total("link_frames_sent") if mesh else 0
            messages_before = cluster.total("link_messages_sent") if mesh else 0
            started = time.monotonic()
            result = asyncio.run(
                load.run_load(
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
            cpu = _cpu(cluster) - cpu_before
            forwarded = cluster.total("forwarded") - forwarded_before if mesh else 0
            if mesh:
                frames = cluster.total("link_frames_sent") - frames_before
                messages = cluster.total("link_messages_sent") - messages_before
                _progress(f"  link frames {frames} in {messages} messages")
            done = result.completed_round_trips
            rps = done / result.wall_time if result.wall_time else 0.0
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
                cpu_per_1k=cpu * 1000 / done if done else math.nan,
                forwarded=forwarded,
                errors=result.errors[:3],
            )
            _progress(
                f"  {name:<22} {workload:<9} ok {cell.ok_sessions}/{clients} "
                f"{cell.rps:8.0f} rt/s  p50 {cell.p50_ms:6.1f} ms  p99 {cell.p99_ms:6.1f} ms  "
                f"cpu {cell.cpu_per_1k:5.2f} s/1k  fwd {forwarded}"
            )
            cells.append(cell)
        return cells
    finally:
        if lb is not None:
            lb.stop()
        cluster.stop()


def _cpu(cluster: Any) -> float:
    from .benchkit.sysinfo import cpu_seconds

    return sum(cpu_seconds(node.proc.pid) or 0.0 for node in cluster.nodes)


def _ratios(cells: list[Cell]) -> None:
    base = {c.workload: c for c in cells if c.scenario == BASELINE}
    owners = {(c.scenario, c.workload): c for c in cells if c.scenario.endswith("-owner")}
    for cell in cells:
        b = base.get(cell.workload)
        if b is None:
            continue
        cell.ratios = {
            "rps": cell.rps / b.rps if b.rps else math.nan,
            "p50": cell.p50_ms / b.p50_ms if b.p50_ms else math.nan,
            "p99": cell.p99_ms / b.p99_ms if b.p99_ms else math.nan,
            "cpu": cell.cpu_per_1k / b.cpu_per_1k if b.cpu_per_1k else math.nan,
        }
        if cell.scenario in ROUND_ROBIN and cell.workload == "polling" and cell.round_trips:
            # CPU per round trip = base * (1 + f * c), f the share of requests forwarded
            # (2/3 with 3 nodes): c, the CPU a forward adds relative to serving the request.
            # The base is the same mesh behind an owner-aware config (no forward) when it ran,
            # so that c prices the hop alone; else the sticky baseline.
            owner = owners.get((cell.scenario.replace("-rr", "-owner"), cell.workload))
            base_cpu = owner.cpu_per_1k if owner is not None else b.cpu_per_1k
            share = cell.forwarded / max(1, _requests(cell))
            extra = cell.cpu_per_1k / base_cpu - 1 if base_cpu else math.nan
            cell.ratios["c"] = extra / share if share > 0 else math.nan


def _requests(cell: Cell) -> int:
    """Engine.IO requests a polling workload makes: per round trip, one POST and one GET
    (the ack comes back on a long-poll), plus the handshake and connect per session."""
    return 2 * cell.round_trips + 3 * cell.ok_sessions


def _table(cells: list[Cell]) -> str:
    head = (
        f"{'scenario':<22} {'workload':<9} {'ok/failed':>10} {'rt/s':>8} {'x':>6} "
        f"{'p50 ms':>8} {'x':>6} {'p99 ms':>8} {'x':>6} {'cpu s/1k':>9} {'x':>6} "
        f"{'fwd':>6} {'c':>6}"
    )
    lines = [head, "-" * len(head)]
    for c in cells:
        r = c.ratios
        lines.append(
            f"{c.scenario:<22} {c.workload:<9} {f'{c.ok_sessions}/{c.failed_sessions}':>10} "
            f"{c.rps:8.0f} {r.get('rps', math.nan):6.2f} {c.p50_ms:8.1f} "
            f"{r.get('p50', math.nan):6.2f} {c.p99_ms:8.1f} {r.get('p99', math.nan):6.2f} "
            f"{c.cpu_per_1k:9.2f} {r.get('cpu', math.nan):6.2f} {c.forwarded:6d} "
            f"{r.get('c', math.nan):6.2f}"
        )
    lines.append(f"x = ratio to {BASELINE} for the same workload, measured in this run")
    lines.append(
        "cpu s/1k = CPU seconds of every node process (utime + stime) per 1,000 round trips; "
        "fwd = requests the nodes forwarded; c = the CPU a forward adds relative to serving "
        "a request, from the cpu against the same mesh behind the owner-aware config (or "
        "sticky) and the share of requests forwarded (rr setups)"
    )
    return "\n".join(lines)


def _chart(cells: list[Cell], path: Path) -> bool:
    """Draw the chart; False (and a one-line note) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        print(
            f"no {path.name}: matplotlib is not installed (pip install 'siomesh[bench]')",
            file=sys.stderr,
        )
        return False

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
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``siomesh bench`` (also ``python -m siomesh.bench``)."""
    parser.add_argument(
        "--scenario",
        choices=SCENARIO_KINDS,
        default="roundtrip",
        help="roundtrip (default): acked round trips through every setup; scale: N clients in "
        "one room, K broadcasts; latency: broadcast latency, mesh adapter vs Redis; connects: "
        "connect storms (lost CONNECTs, takeovers) and polling-only connect time vs sticky; "
        "rolling: rolling restarts under steady calls (calls lost, downtime, exit times)",
    )
    parser.add_argument("--quick", action="store_true", help="a small run, for tests")
    parser.add_argument("--out", default="bench-results", help="directory for JSON, text, PNG")
    parser.add_argument(
        "--clients",
        type=_count,
        default=None,
        help="clients per setup (roundtrip 50, scale 2000, latency 150 receivers, connects 1000)",
    )
    parser.add_argument("--rounds", type=_count, default=None, help="round trips per client")
    parser.add_argument(
        "--broadcasts",
        type=_count,
        default=None,
        help="room broadcasts (scale: 20; latency: paced ones, 200, and a burst of 3x that)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="seconds between broadcasts (scale: 0.25; latency, paced ones: 0.05)",
    )
    parser.add_argument(
        "--client-procs",
        type=_count,
        default=None,
        help="client processes for scale/latency (default: scale one per 250 clients, latency "
        "one per 75 receivers and at least 2; at most 8)",
    )
    parser.add_argument(
        "--workloads",
        default=None,
        help="roundtrip: comma-separated workloads (polling, upgrade, websocket; default all)",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated setups to run (default: all); roundtrip: see the docs; "
        "scale, latency: mesh, sticky (or redis)",
    )


def _count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number, at least 1")
    return int(value)


def _connects(args: argparse.Namespace) -> int:
    from .benchkit import connects

    params = connects.ConnectsParams()
    if args.quick:
        params = connects.ConnectsParams(clients=60, wave=30, echoes=2, polling_clients=30)
    if args.clients:
        params = replace(params, clients=args.clients)
    return connects.run_connects(params, Path(args.out))


def _rolling(args: argparse.Namespace) -> int:
    from .benchkit import rolling

    params = rolling.RollingParams()
    if args.quick:
        params = rolling.RollingParams(clients=6, settle=1.0, drain_timeout=1.5)
    if args.clients:
        params = replace(params, clients=args.clients)
    if args.interval is not None:
        params = replace(params, interval=args.interval)
    setups = _only(args.only, rolling.SETUPS, "rolling")
    if setups is None:
        return 2
    if setups:
        params = replace(params, setups=tuple(setups))
    return rolling.run_rolling(params, Path(args.out))


def _only(option: str | None, known: Collection[str], scenario: str) -> list[str] | None:
    """The setup names ``--only`` lists (empty: all), or None after saying which are unknown."""
    names = [n.strip() for n in (option or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        print(
            f"siomesh bench: unknown setup(s) {unknown} for --scenario {scenario}; "
            f"known: {sorted(known)}",
            file=sys.stderr,
        )
        return None
    return names


def _broadcasts(args: argparse.Namespace) -> int:
    scenario = getattr(args, "scenario", "roundtrip")
    if scenario == "connects":
        return _connects(args)
    if scenario == "rolling":
        return _rolling(args)
    out = Path(args.out)
    quick = bool(args.quick)
    clients = args.clients
    count = getattr(args, "broadcasts", None)
    workers = getattr(args, "client_procs", None)
    interval = getattr(args, "interval", None)
    if interval is not None and not 0 <= interval <= 60:
        print("siomesh bench: --interval must be between 0 and 60 seconds", file=sys.stderr)
        return 2
    from .benchkit import broadcasts

    names = _only(args.only, broadcasts.SETUP_NAMES, scenario)
    if names is None:
        return 2
    only = {broadcasts.SETUP_NAMES[n] for n in names}

    if scenario == "scale":
        scale = broadcasts.ScaleParams()
        if quick:
            scale = broadcasts.ScaleParams(
                clients=60, broadcasts=5, interval=0.05, connect_timeout=15.0,
                call_timeout=10.0, broadcast_wait=15.0,
            )  # fmt: skip
        scale = replace(
            scale,
            **_given(clients=clients, broadcasts=count, interval=interval, processes=workers),
        )
        return broadcasts.run_scale(scale, out, only)
    latency = broadcasts.LatencyParams()
    if quick:
        latency = broadcasts.LatencyParams(
            receivers=30, paced=100, interval=0.02, burst=300, connect_timeout=15.0,
            call_timeout=10.0, delivery_wait=15.0,
        )  # fmt: skip
    latency = replace(
        latency,
        **_given(
            receivers=clients,
            paced=count,
            burst=3 * count if count else None,
            interval=interval,
            processes=workers,
        ),
    )
    return broadcasts.run_latency(latency, out, only)


def _given(**options: float | None) -> dict[str, Any]:
    """The options given on the command line (not None)."""
    return {k: v for k, v in options.items() if v is not None}


def main(args: argparse.Namespace) -> int:
    """Run the benchmark described by the parsed ``siomesh bench`` arguments."""
    if getattr(args, "scenario", "roundtrip") != "roundtrip":
        return _broadcasts(args)
    # clients of scenarios that are expected to fail leave sockets for the GC: not news
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    clients = args.clients or (12 if args.quick else 50)
    rounds = args.rounds or (3 if args.quick else 20)
    names = [n for n in SCENARIOS if n not in ON_REQUEST]
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
    if getattr(args, "workloads", None):
        workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
        if not set(workloads) <= set(WORKLOADS):
            print(f"siomesh bench: workloads are {', '.join(WORKLOADS)}", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells: list[Cell] = []
    _progress(f"siomesh bench: {len(names)} scenarios x {workloads}, {clients} clients x {rounds}")
    with tempfile.TemporaryDirectory(prefix="siomesh-bench-") as tmp:
        for index, name in enumerate(names, start=1):
            _progress(f"[{index}/{len(names)}] {name}")
            cells.extend(_run_scenario(name, workloads, clients, rounds, Path(tmp)))
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
    written = [out / "bench.json", out / "bench.txt"]
    if _chart(cells, out / "bench.png"):
        written.append(out / "bench.png")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """``python -m siomesh.bench``: the same as ``siomesh bench``."""
    parser = argparse.ArgumentParser(
        prog="python -m siomesh.bench", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(run())
