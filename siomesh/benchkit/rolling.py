"""``siomesh bench --scenario rolling``: rolling restarts under steady calls.

Two setups, one after the other, each under the same load: ``clients`` python-socketio clients
(half polling-only, half polling then WebSocket; python-socketio's default reconnection), each
calling ``echo`` every ``interval`` seconds with an ack timeout of ``call_timeout``.

* ``uvicorn+nginx``: three plain ``uvicorn`` processes (uvicorn's own defaults: no
  ``--timeout-graceful-shutdown``) behind nginx round-robin. Each node in turn gets SIGTERM; the
  scenario waits for it to exit, starts it again on the same port (same ``node_url``) and waits
  for its health to answer 200 before the next one.
* ``siomesh run``: ``siomesh run --workers 3`` on one port; SIGHUP restarts its workers one by
  one (each drains first).

What is measured, per setup: calls sent and answered; calls *lost* (sent, never answered: the
ack timed out or the connection dropped under it); calls *not sent* because the client was
reconnecting at that moment (python-socketio raises at once: the caller knows); how long each
client was disconnected (the longest, and how many disconnections); how long each node took to
exit after SIGTERM. The figures the operations issue asks for: 0 lost, every node gone within
5 s, no client down more than 2 s.

Every wait is bounded; every process is ended by its pid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import socketio

from . import balancers
from .load import close_client
from .ports import LOOPBACK, free_port, free_ports
from .procs import TEST_SECRET, Proc, ProcessError, node_argv, start_process, stop_all, wait_http

__all__ = ["RollReport", "RollingParams", "run_rolling"]

MESH_APP = "siomesh.benchkit.apps.echo:app"
SETUPS = ("uvicorn+nginx", "siomesh run")


@dataclass(frozen=True)
class RollingParams:
    clients: int = 30
    interval: float = 0.2
    call_timeout: float = 5.0
    #: seconds of load before the first restart and after the last one
    settle: float = 3.0
    ready_timeout: float = 30.0
    setups: tuple[str, ...] = SETUPS
    #: the nodes' ``drain_timeout`` (None: the default, 3 s); the quick mode shortens it
    drain_timeout: float | None = None


@dataclass
class RollReport:
    setup: str
    clients: int
    calls: int = 0
    answered: int = 0
    lost: int = 0
    not_sent: int = 0
    disconnections: int = 0
    max_down_s: float = 0.0
    exit_s: list[float] = field(default_factory=list)
    roll_s: float = 0.0
    lost_reasons: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _progress(text: str) -> None:
    print(text, flush=True)


class _Caller:
    """One client: connects, then calls ``echo`` every ``interval`` until told to stop."""

    def __init__(self, index: int, url: str, p: RollingParams) -> None:
        self.index = index
        self.url = url
        self.p = p
        self.polling_only = index % 2 == 0
        self.client = socketio.AsyncClient()  # python-socketio's default reconnection
        self.calls = self.answered = self.not_sent = 0
        self.lost: Counter[str] = Counter()
        self.down_since: float | None = None
        self.downs: list[float] = []
        self.client.on("connect", self._on_connect)
        self.client.on("disconnect", self._on_disconnect)

    def _on_connect(self) -> None:
        if self.down_since is not None:
            self.downs.append(time.monotonic() - self.down_since)
            self.down_since = None

    def _on_disconnect(self, reason: object = None) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()

    async def connect(self) -> None:
        transports = ["polling"] if self.polling_only else ["polling", "websocket"]
        await asyncio.wait_for(
            self.client.connect(self.url, transports=transports, wait_timeout=10), 20
        )

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            await asyncio.sleep(self.p.interval)
            n += 1
            if not self.client.connected:
                self.not_sent += 1
                continue
            self.calls += 1
            try:
                got = await self.client.call(
                    "echo", {"i": self.index, "n": n}, timeout=self.p.call_timeout
                )
            except socketio.exceptions.BadNamespaceError:
                self.calls -= 1  # refused before it was sent: the caller knows at once
                self.not_sent += 1
                continue
            except Exception as exc:
                self.lost[f"{type(exc).__name__} ({self.client.transport() or '-'})"] += 1
                continue
            if got == {"i": self.index, "n": n}:
                self.answered += 1
            else:
                self.lost["wrong answer"] += 1

    def longest_down(self, now: float) -> float:
        current = [now - self.down_since] if self.down_since is not None else []
        return max([*self.downs, *current], default=0.0)


async def _load(
    url: str, p: RollingParams, roll: Callable[[], Awaitable[None]], report: RollReport
) -> None:
    """Connect the clients, run ``roll()`` under their calls, tally."""
    callers = [_Caller(i, url, p) for i in range(p.clients)]
    stop = asyncio.Event()
    tasks: list[asyncio.Future[None]] = []
    try:
        results = await asyncio.gather(*(c.connect() for c in callers), return_exceptions=True)
        failed = [repr(r) for r in results if isinstance(r, BaseException)]
        if failed:
            report.errors.append(f"{len(failed)} clients did not connect: {failed[0]}")
            return
        tasks = [asyncio.ensure_future(c.run(stop)) for c in callers]
        await asyncio.sleep(p.settle)
        began = time.monotonic()
        await roll()
        report.roll_s = time.monotonic() - began
        await asyncio.sleep(p.settle)
    finally:
        stop.set()
        if tasks:
            await asyncio.wait(tasks, timeout=p.call_timeout + 5)
        now = time.monotonic()
        for c in callers:
            report.calls += c.calls
            report.answered += c.answered
            report.lost += sum(c.lost.values())
            report.not_sent += c.not_sent
            report.disconnections += len(c.downs) + (1 if c.down_since is not None else 0)
            report.max_down_s = max(report.max_down_s, c.longest_down(now))
            for reason, count in c.lost.items():
                report.lost_reasons[reason] = report.lost_reasons.get(reason, 0) + count
        await asyncio.gather(*(close_client(c.client) for c in callers))


def _drain_env(p: RollingParams) -> dict[str, str]:
    if p.drain_timeout is None:
        return {}
    return {"SIOMESH_DRAIN_TIMEOUT": str(p.drain_timeout)}


def _node_env(urls: list[str], url: str, p: RollingParams) -> dict[str, str]:
    env = dict(os.environ, **_drain_env(p))
    env.update(
        {
            "SIOMESH_PEERS": ",".join(urls),
            "SIOMESH_SECRET": TEST_SECRET,
            "SIOMESH_NODE_URL": url,
            "PYTHONUNBUFFERED": "1",
            "ECHO_PING_INTERVAL": "25",
        }
    )
    return env


def _start_node(
    work: Path, urls: list[str], index: int, port: int, run: int, p: RollingParams
) -> Proc:
    # uvicorn's own defaults (no --timeout-graceful-shutdown): the drain must bound the exit
    return start_process(
        f"node{index + 1}",
        node_argv(MESH_APP, port, ()),
        log_path=work / f"node{index + 1}-run{run}.log",
        env=_node_env(urls, urls[index], p),
    )


def _uvicorn_nginx(p: RollingParams, work: Path) -> RollReport:
    report = RollReport(setup="uvicorn+nginx", clients=p.clients)
    if balancers.binary_for("nginx") is None:
        report.errors.append("nginx is not installed")
        return report
    ports = free_ports(3)
    urls = [f"http://{LOOPBACK}:{port}" for port in ports]
    nodes = [_start_node(work, urls, i, port, 0, p) for i, port in enumerate(ports)]
    lb = None
    try:
        for url, proc in zip(urls, nodes, strict=True):
            wait_http(url + "/_siomesh/health", timeout=p.ready_timeout, procs=[proc])
        lb = balancers.start_balancer("nginx", [u.split("//")[1] for u in urls], work / "lb")

        async def roll() -> None:
            for i, port in enumerate(ports):
                began = time.monotonic()
                nodes[i].popen.send_signal(signal.SIGTERM)
                while nodes[i].alive():
                    if time.monotonic() - began > p.ready_timeout:
                        report.errors.append(f"node {i + 1} still running after SIGTERM")
                        nodes[i].kill()
                        break
                    await asyncio.sleep(0.02)
                report.exit_s.append(round(time.monotonic() - began, 2))
                _progress(f"  node {i + 1} exited {report.exit_s[-1]:.2f} s after SIGTERM")
                nodes[i] = _start_node(work, urls, i, port, 1, p)
                await asyncio.to_thread(
                    wait_http,
                    urls[i] + "/_siomesh/health",
                    timeout=p.ready_timeout,
                    procs=[nodes[i]],
                )

        asyncio.run(_load(lb.url, p, roll, report))
    except ProcessError as exc:
        report.errors.append(str(exc)[:2000])
    finally:
        if lb is not None:
            lb.stop()
        stop_all(nodes)
    return report


def _siomesh_run(p: RollingParams, work: Path) -> RollReport:
    report = RollReport(setup="siomesh run", clients=p.clients)
    port = free_port()
    log_path = work / "siomesh-run.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", ECHO_PING_INTERVAL="25", **_drain_env(p))
    env.setdefault("SIOMESH_SECRET", TEST_SECRET)
    argv = [sys.executable, "-m", "siomesh.cli", "run", MESH_APP, "--workers", "3"]
    argv += ["--port", str(port), "--host", LOOPBACK]
    proc = start_process("siomesh-run", argv, log_path=log_path, env=env)
    url = f"http://{LOOPBACK}:{port}"

    def output() -> str:
        return log_path.read_text(errors="replace")

    try:
        deadline = time.monotonic() + p.ready_timeout
        while "worker 2:" not in output():
            if not proc.alive() or time.monotonic() > deadline:
                report.errors.append(f"siomesh run did not start:\n{output()[-2000:]}")
                return report
            time.sleep(0.1)
        wait_http(url + "/_siomesh/health", timeout=p.ready_timeout)

        async def roll() -> None:
            proc.popen.send_signal(signal.SIGHUP)
            began = time.monotonic()
            while "rolling restart done" not in output():
                if time.monotonic() - began > 3 * p.ready_timeout:
                    report.errors.append("the rolling restart did not finish")
                    return
                await asyncio.sleep(0.1)

        asyncio.run(_load(url, p, roll, report))
    except ProcessError as exc:
        report.errors.append(str(exc)[:2000])
    finally:
        proc.stop(grace=15.0)  # SIGTERM (the workers drain), then the group by pid
    return report


def render(reports: list[RollReport], p: RollingParams) -> str:
    lines = [
        f"rolling restart: {p.clients} clients (half polling-only), a call every "
        f"{p.interval} s each, ack timeout {p.call_timeout} s",
        f"{'setup':<15} {'calls':>6} {'answered':>8} {'lost':>5} {'not sent':>8} "
        f"{'disconn.':>8} {'max down s':>10} {'exit s (each node)':>20} {'roll s':>7}",
    ]
    for r in reports:
        exits = ", ".join(f"{x:.1f}" for x in r.exit_s) or "-"
        lines.append(
            f"{r.setup:<15} {r.calls:>6} {r.answered:>8} {r.lost:>5} {r.not_sent:>8} "
            f"{r.disconnections:>8} {r.max_down_s:>10.2f} {exits:>20} {r.roll_s:>7.1f}"
        )
        if r.lost_reasons:
            lines.append(f"  lost: {r.lost_reasons}")
        for error in r.errors:
            lines.append(f"  error: {error}")
    return "\n".join(lines)


def run_rolling(p: RollingParams, out: Path) -> int:
    """Run the scenario; write ``rolling.json`` and ``rolling.txt`` under ``out``. Returns 0
    when every setup ran and lost no call, else 1."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    out.mkdir(parents=True, exist_ok=True)
    reports: list[RollReport] = []
    with tempfile.TemporaryDirectory(prefix="siomesh-rolling-") as tmp:
        for setup in p.setups:
            _progress(f"[rolling] {setup}")
            work = Path(tmp) / setup.replace(" ", "-").replace("+", "-")
            work.mkdir()
            run = _uvicorn_nginx if setup == "uvicorn+nginx" else _siomesh_run
            reports.append(run(p, work))
    table = render(reports, p)
    print(table)
    (out / "rolling.txt").write_text(table + "\n")
    (out / "rolling.json").write_text(
        json.dumps({"params": asdict(p), "reports": [asdict(r) for r in reports]}, indent=2)
    )
    print(f"wrote {out / 'rolling.json'}, {out / 'rolling.txt'}")
    return 0 if all(not r.errors and r.lost == 0 for r in reports) else 1
