"""``siomesh bench --scenario connects``: connect storms through a non-sticky balancer.

Upgrade takeover (:mod:`siomesh.takeover`) moves a new session to the node that receives its
WebSocket. This measures what users would judge it by, in one run:

* **mesh, default transports** (polling, then WebSocket): N python-socketio clients (and, when
  Node.js and the npm ``socket.io-client`` are installed in a source checkout's
  ``tests/e2e/node``, N npm clients) connect in waves through nginx round-robin onto 3 SioMesh
  nodes. Reported: sessions connected, CONNECTs lost (a client whose connect failed), sessions
  upgraded, acked echoes answered in order, how many times the app's ``connect`` handler ran
  (summed over the nodes: must equal the sessions), and the nodes' ``relayed_websockets`` (must
  be 0), ``takeovers`` and ``takeover_fallbacks``.
* **polling-only connect time**, mesh (nginx round-robin) against sticky (HAProxy cookie, plain
  nodes), side by side: the hold that makes a takeover possible delays a polling-only client's
  CONNECT by at most ``takeover.window``; this shows what it costs (p50/p99 and the ratio).
  Measured before the storms, on fresh nodes as the sticky ones are, with the bench's own heap
  settled (:func:`~siomesh.benchkit.load.settled_heap`): full garbage collections after a storm,
  in the nodes or in the bench, stall whole waves and would be charged to one side only.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import socketio

from . import balancers, procs
from .fleet import percentile, raise_fd_limit
from .load import close_client, settled_heap

__all__ = ["ConnectsParams", "run_connects"]

MESH_APP = "siomesh.benchkit.apps.echo:app"
PLAIN_APP = "siomesh.benchkit.apps.plain:app"
#: where a source checkout keeps the npm client (the bench skips npm without it)
NODE_DIR = Path(__file__).resolve().parents[2] / "tests" / "e2e" / "node"


@dataclass(frozen=True)
class ConnectsParams:
    clients: int = 1000
    wave: int = 100
    echoes: int = 2
    polling_clients: int = 200
    connect_timeout: float = 20.0


@dataclass
class StormReport:
    client: str
    clients: int
    connected: int = 0
    lost_connect: int = 0
    upgraded: int = 0
    echoed_in_order: int = 0
    connect_handlers: int = 0
    relayed_websockets: int = 0
    takeovers: int = 0
    takeover_fallbacks: int = 0
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)


def _progress(text: str) -> None:
    print(text, flush=True)


def _totals(urls: list[str]) -> dict[str, int]:
    totals = {"relayed_websockets": 0, "takeovers": 0, "takeover_fallbacks": 0}
    for url in urls:
        status = httpx.get(url + "/_siomesh/status", timeout=10).json()
        for key in totals:
            totals[key] += int(status.get(key, 0))
    return totals


async def _connect_handlers(urls: list[str], probes: int) -> int:
    """Connect handler runs summed over the nodes, minus this probe's and the ``probes - 1``
    earlier probes' own connects."""
    total = 0
    for url in urls:
        client = socketio.AsyncClient(reconnection=False)
        await asyncio.wait_for(client.connect(url, transports=["polling"]), 15)
        try:
            total += int(await client.call("connects", timeout=10)) - probes
        finally:
            await close_client(client)
    return total


async def _python_storm(url: str, p: ConnectsParams, report: StormReport) -> None:
    async def one(index: int) -> socketio.AsyncClient | None:
        client = socketio.AsyncClient(reconnection=False)
        try:
            await asyncio.wait_for(
                client.connect(url, wait_timeout=p.connect_timeout), p.connect_timeout + 5
            )
        except Exception as exc:
            report.lost_connect += 1
            if len(report.errors) < 10:
                report.errors.append(f"client {index} connect: {exc!r}")
            await close_client(client)
            return None
        report.connected += 1
        if client.transport() == "websocket":
            report.upgraded += 1
        try:
            got = [
                (await client.call("echo", {"i": i}, timeout=p.connect_timeout))["i"]
                for i in range(p.echoes)
            ]
            if got == list(range(p.echoes)):
                report.echoed_in_order += 1
        except Exception as exc:
            if len(report.errors) < 10:
                report.errors.append(f"client {index} echo: {exc!r}")
        return client

    clients: list[socketio.AsyncClient] = []
    try:
        for start in range(0, p.clients, p.wave):
            wave = await asyncio.gather(
                *(one(i) for i in range(start, min(p.clients, start + p.wave)))
            )
            clients.extend(c for c in wave if c is not None)
    finally:
        await asyncio.gather(*(close_client(c) for c in clients))


def _npm_storm(url: str, p: ConnectsParams, report: StormReport) -> bool:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "socket.io-client").exists():
        return False
    done = subprocess.run(
        [node, "connects.js", url, str(p.clients), str(p.wave), str(p.echoes)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        report.errors.append(f"connects.js exited {done.returncode}: {done.stderr[-300:]}")
        return True
    result = json.loads(done.stdout.strip().splitlines()[-1])
    report.connected = int(result["connected"])
    report.lost_connect = int(result["lostConnect"])
    report.upgraded = int(result["upgraded"])
    report.echoed_in_order = int(result["echoedInOrder"])
    report.errors.extend(result.get("errors", [])[:10])
    return True


async def _polling_connect_times(url: str, p: ConnectsParams, wave: int) -> list[float]:
    """Connect times (handshake to Socket.IO connected) of polling-only clients, ``wave`` at
    a time (1: one at a time)."""
    times: list[float] = []

    async def one() -> socketio.AsyncClient | None:
        client = socketio.AsyncClient(reconnection=False)
        began = time.monotonic()
        try:
            await asyncio.wait_for(
                client.connect(url, transports=["polling"], wait_timeout=p.connect_timeout),
                p.connect_timeout + 5,
            )
        except Exception:
            await close_client(client)
            return None
        times.append(time.monotonic() - began)
        return client

    clients: list[socketio.AsyncClient] = []
    try:
        with settled_heap():  # the storms' garbage is not collected in the middle of a wave
            for start in range(0, p.polling_clients, wave):
                got = await asyncio.gather(
                    *(one() for _ in range(min(wave, p.polling_clients - start)))
                )
                clients.extend(c for c in got if c is not None)
    finally:
        await asyncio.gather(*(close_client(c) for c in clients))
    return times


#: how polling-only connects are timed: (label, clients at a time)
_WAVES = ((" (one at a time)", 1), (" (waves of 25)", 25))


def run_connects(p: ConnectsParams, out: Path) -> int:
    """Run the scenario; write ``connects.json`` and ``connects.txt`` under ``out``. Returns
    0 when nothing was lost, duplicated or relayed, else 1."""
    import tempfile

    raise_fd_limit()
    if balancers.binary_for("nginx") is None:
        print("siomesh bench: --scenario connects needs nginx", flush=True)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    storms: list[StormReport] = []
    connect_times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="siomesh-connects-") as tmp:
        work = Path(tmp)
        mesh = procs.start_mesh(3, work / "mesh", app=MESH_APP, env={"ECHO_PING_INTERVAL": "25"})
        try:
            lb = balancers.start_balancer("nginx", mesh.addresses, work / "mesh-lb")
            try:
                # Polling-only connects first, on fresh nodes, as the sticky nodes are: after
                # the storms, the nodes' full garbage collections (about 115 ms each, of the
                # storms' 2,000 closed sessions) stalled whole waves, which the sticky side
                # never met (seen with a gc callback on every process).
                for label, wave in _WAVES:
                    connect_times[f"mesh-nginx-rr{label}"] = asyncio.run(
                        _polling_connect_times(lb.url, p, wave)
                    )
                probes = 0
                for kind in ("python", "npm"):
                    report = StormReport(client=kind, clients=p.clients)
                    probes += 1
                    before_handlers = asyncio.run(_connect_handlers(mesh.urls, probes))
                    before = _totals(mesh.urls)
                    began = time.monotonic()
                    if kind == "python":
                        asyncio.run(_python_storm(lb.url, p, report))
                    elif not _npm_storm(lb.url, p, report):
                        _progress("  npm: skipped (no node, or no socket.io-client in tests/e2e)")
                        continue
                    report.wall_s = time.monotonic() - began
                    now = _totals(mesh.urls)
                    report.relayed_websockets = now["relayed_websockets"]
                    report.takeovers = now["takeovers"] - before["takeovers"]
                    report.takeover_fallbacks = (
                        now["takeover_fallbacks"] - before["takeover_fallbacks"]
                    )
                    probes += 1
                    report.connect_handlers = (
                        asyncio.run(_connect_handlers(mesh.urls, probes)) - before_handlers
                    )
                    storms.append(report)
                    _progress(
                        f"  {kind:<6} {report.connected}/{p.clients} connected, "
                        f"{report.lost_connect} CONNECT lost, {report.upgraded} upgraded, "
                        f"{report.echoed_in_order} echoed in order, connect handler ran "
                        f"{report.connect_handlers}x, relayed {report.relayed_websockets}, "
                        f"takeovers {report.takeovers}, fallbacks {report.takeover_fallbacks} "
                        f"({report.wall_s:.1f} s)"
                    )
            finally:
                lb.stop()
        finally:
            mesh.stop()
        if balancers.binary_for("haproxy") is not None:
            plain = procs.start_mesh(3, work / "plain", app=PLAIN_APP)
            try:
                lb = balancers.start_balancer(
                    "haproxy",
                    plain.addresses,
                    work / "plain-lb",
                    template="haproxy-sticky-cookie.cfg",
                )
                try:
                    # aiohttp keeps cookies only for host names, not IP addresses
                    url = lb.url.replace("127.0.0.1", "localhost")
                    for label, wave in _WAVES:
                        connect_times[f"sticky-haproxy-cookie{label}"] = asyncio.run(
                            _polling_connect_times(url, p, wave)
                        )
                finally:
                    lb.stop()
            finally:
                plain.stop()
    lines = ["connect storms (3 nodes, nginx round-robin, default transports):"]
    for r in storms:
        lines.append(
            f"  {r.client:<6} clients {r.clients}  connected {r.connected}  CONNECT lost "
            f"{r.lost_connect}  upgraded {r.upgraded}  echoed in order {r.echoed_in_order}  "
            f"connect handler runs {r.connect_handlers}  relayed {r.relayed_websockets}  "
            f"takeovers {r.takeovers}  fallbacks {r.takeover_fallbacks}"
        )
    lines.append(
        f"polling-only connect time ({p.polling_clients} clients, one at a time and in waves "
        "of 25, on fresh nodes; the mesh does not hold python-socketio's polling-only "
        "sessions, from the first):"
    )
    for name, values in connect_times.items():
        label = name[name.index(" ") :] if " " in name else ""
        base = connect_times.get(f"sticky-haproxy-cookie{label}")
        p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
        ratio = ""
        if base and not name.startswith("sticky-haproxy-cookie"):
            b50, b99 = percentile(base, 0.5) * 1000, percentile(base, 0.99) * 1000
            ratio = f"  ({p50 / b50:.2f}x p50, {p99 / b99:.2f}x p99 vs sticky)"
        lines.append(
            f"  {name:<36} ok {len(values)}/{p.polling_clients}  p50 {p50:7.1f} ms  "
            f"p99 {p99:7.1f} ms{ratio}"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    (out / "connects.txt").write_text(text + "\n")
    (out / "connects.json").write_text(
        json.dumps(
            {
                "params": asdict(p),
                "storms": [asdict(r) for r in storms],
                "polling_connect_s": connect_times,
            },
            indent=2,
        )
    )
    bad = any(
        r.lost_connect
        or r.relayed_websockets
        or r.connect_handlers != r.connected
        or r.echoed_in_order != r.connected
        for r in storms
    )
    return 1 if bad else 0
