"""Room broadcasts, mesh against sticky + Redis, side by side in one run: the ``scale`` and
``latency`` scenarios of ``siomesh bench`` (see docs/benchmark.md).

* ``scale``: N clients (1 in 3 polling only, the rest polling then WebSocket) connect at once
  through a balancer and join one room; one more client asks a node for K room broadcasts.
  Setups: 3 SioMesh nodes behind nginx round-robin (``nginx.conf``), and 3 plain
  python-socketio nodes on ``AsyncRedisManager`` with a real redis-server behind HAProxy
  cookie stickiness (``haproxy-sticky-cookie.cfg``).
* ``latency``: R WebSocket receivers spread evenly over 3 nodes (no balancer), one sender on
  the first node; paced broadcasts (one every 50 ms) for latency, then a burst as fast as the
  sender's node emits them for deliveries per second; then broadcasts made in turn by a sender
  on each node, each awaited before the next (the order of issue 15: every receiver must get
  them in order). Setups: 3 SioMesh nodes (the mesh adapter), and 3 plain nodes on
  ``AsyncRedisManager`` + redis-server.

Every process is started on free loopback ports and ended by its pid (also on failure); every
wait is bounded, and what did not arrive in time is counted, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import socketio

from .balancers import Balancer, binary_for, start_balancer
from .fleet import ConnectReport, DeliveryReport, Fleet, Member, percentile, raise_fd_limit
from .load import close_client
from .procs import MeshCluster, ProcessError, RedisServer, start_mesh
from .sysinfo import connections_to, cpu_seconds, rss_bytes

__all__ = ["SETUP_NAMES", "LatencyParams", "ScaleParams", "run_latency", "run_scale"]

ROOM = "bench"
MESH_APP = "siomesh.benchkit.apps.echo:app"
PLAIN_APP = "siomesh.benchkit.apps.plain:app"
MESH, STICKY = "mesh", "sticky"


@dataclass(frozen=True)
class ScaleParams:
    clients: int = 2000
    broadcasts: int = 20
    # A pace the sticky + Redis baseline sustains on a 2-core machine with 2,000 receivers
    # (at 20 ms its nodes fall seconds behind and miss HAProxy's 1 s health checks).
    interval: float = 0.25
    connect_timeout: float = 60.0
    call_timeout: float = 30.0
    broadcast_wait: float = 60.0
    processes: int | None = None


@dataclass(frozen=True)
class LatencyParams:
    receivers: int = 150
    # Light enough (3,000 deliveries/s) that latency is the path, not a queue: at 5 ms
    # (30,000/s) a 2-core machine falls seconds behind within a second.
    paced: int = 200
    interval: float = 0.05
    # 90,000 deliveries: a few seconds. At 3,000 (450,000 deliveries) every receiver lost its
    # WebSocket a few seconds in, in both setups: the figures then measure a collapse.
    burst: int = 600
    #: broadcasts made in turn by a sender on each node, each awaited before the next
    rotating: int = 60
    warmup: int = 20
    connect_timeout: float = 30.0
    call_timeout: float = 30.0
    delivery_wait: float = 60.0
    #: client processes; None: one per :data:`RECEIVERS_PER_PROCESS` receivers (2 to 8)
    processes: int | None = None


#: Receivers per client process in the latency scenario. With one process for 150 receivers
#: the burst figure measured the client: two processes raised both setups' burst rate by 1.3 to
#: 1.7x, four raised it no further (docs/benchmark.md, "latency").
RECEIVERS_PER_PROCESS = 75


def latency_processes(params: LatencyParams) -> int:
    """The client processes a latency run uses (see :data:`RECEIVERS_PER_PROCESS`)."""
    if params.processes is not None:
        return params.processes
    return max(2, min(8, math.ceil(params.receivers / RECEIVERS_PER_PROCESS)))


@dataclass
class Outcome:
    """What one setup measured; ``skipped`` says why it did not run."""

    setup: str
    description: str
    skipped: str | None = None
    connect: ConnectReport | None = None
    deliveries: dict[str, DeliveryReport] = field(default_factory=dict)
    spans: dict[str, float] = field(default_factory=dict)
    node_rss: list[int | None] = field(default_factory=list)
    redis_rss: int | None = None
    node_links: int | None = None
    redis_links: int | None = None
    #: summed over the mesh nodes: suspicions raised, and suspicions refuted (false ones)
    suspicions: int | None = None
    false_suspicions: int | None = None
    #: CPU seconds (user + system) spent during the burst phase by the client processes and
    #: by the servers (nodes, and redis-server where there is one); None where /proc is not
    burst_cpu: tuple[float, float] | None = None
    errors: list[str] = field(default_factory=list)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the processes of one setup ---------------------------------------------------------------


@dataclass
class _Setup:
    cluster: MeshCluster | None = None
    redis: RedisServer | None = None
    balancer: Balancer | None = None
    url: str = ""

    def stop(self) -> None:
        for part in (self.balancer, self.cluster, self.redis):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()

    def server_pids(self) -> list[int]:
        """The nodes' pids, and redis-server's where there is one."""
        pids = [n.proc.pid for n in self.cluster.nodes] if self.cluster is not None else []
        if self.redis is not None and self.redis.proc is not None:
            pids.append(self.redis.proc.pid)
        return pids

    def sample(self, outcome: Outcome) -> None:
        """Memory and links of the nodes, while the clients are still connected."""
        if self.cluster is None:
            return
        pids = [n.proc.pid for n in self.cluster.nodes]
        ports = {n.port for n in self.cluster.nodes}
        outcome.node_rss = [rss_bytes(pid) for pid in pids]
        outcome.node_links = connections_to(pids, ports)
        if self.redis is None:  # a mesh: how gossip fared under the load
            with contextlib.suppress(Exception):
                stats = [self.cluster.status(n)["stats"] for n in self.cluster.nodes]
                outcome.suspicions = sum(s.get("gossip_suspected", 0) for s in stats)
                outcome.false_suspicions = sum(s.get("gossip_refuted", 0) for s in stats)
        if self.redis is not None:
            outcome.redis_rss = rss_bytes(self.redis.proc.pid) if self.redis.proc else None
            outcome.redis_links = connections_to(pids, {self.redis.port})
        else:
            outcome.redis_links = 0


def _missing(binaries: list[str]) -> str | None:
    absent = [b for b in binaries if binary_for(b) is None]
    if "redis-server" in binaries and importlib.util.find_spec("redis") is None:
        absent.append("the redis Python package (pip install 'siomesh[bench]')")
    return f"{', '.join(absent)} not installed" if absent else None


def _start(kind: str, workdir: Path, balancer: tuple[str, str, str] | None) -> _Setup:
    """Start a setup: ``kind`` is MESH or STICKY; ``balancer`` is (name, template, host)."""
    setup = _Setup()
    try:
        # ping_timeout 60 s in both setups: a burst leaves each receiver seconds of backlog
        # (600 receivers on 2 cores: ~14 s), the server's PING waits behind it, and
        # python-engineio's client stops writing after max(interval, timeout) + 5 s with
        # nothing to send (the PONG): with 20 s, receivers dropped in both setups
        env = {"ECHO_PING_INTERVAL": "25", "ECHO_PING_TIMEOUT": "60"}
        if kind == STICKY:
            binary = binary_for("redis-server") or "redis-server"
            setup.redis = RedisServer(binary, workdir=workdir).start()
            env["SIOMESH_BENCH_REDIS_URL"] = setup.redis.url
        app = MESH_APP if kind == MESH else PLAIN_APP
        setup.cluster = start_mesh(3, workdir / "nodes", app=app, env=env)
        setup.url = setup.cluster.nodes[0].url
        if balancer is not None:
            name, template, host = balancer
            setup.balancer = start_balancer(
                name, setup.cluster.addresses, workdir / name, template=template
            )
            # aiohttp's cookie jar refuses cookies from IP-address hosts: cookie stickiness
            # needs a host name.
            setup.url = setup.balancer.url.replace("127.0.0.1", host)
    except BaseException:
        setup.stop()
        raise
    return setup


class _Sender:
    """One WebSocket client that asks its node for broadcasts (``broadcast`` event)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.client = socketio.AsyncClient(reconnection=False)

    async def connect(self) -> None:
        await asyncio.wait_for(
            self.client.connect(self.url, transports=["websocket"], wait_timeout=self.timeout),
            self.timeout + 1,
        )

    async def broadcast(
        self, tag: str, count: int, interval: float, start: int = 0
    ) -> tuple[float, str | None]:
        """Returns when the sender started and the error, if the node did not ack in time."""
        began = time.monotonic()
        spec = {"room": ROOM, "tag": tag, "count": count, "interval": interval, "start": start}
        try:
            await self.client.call("broadcast", spec, timeout=self.timeout + count * interval)
        except Exception as exc:
            return began, f"broadcast {tag}: {type(exc).__name__}: {exc}"
        return began, None

    async def close(self) -> None:
        await close_client(self.client)


async def _broadcast_phase(
    fleet: Fleet,
    sender: _Sender,
    outcome: Outcome,
    tag: str,
    count: int,
    interval: float,
    wait: float,
) -> None:
    began, error = await sender.broadcast(tag, count, interval)
    if error:
        outcome.errors.append(error)
    report = await fleet.expect(tag, count, timeout=wait)
    outcome.deliveries[tag] = report
    outcome.spans[tag] = report.last_arrival - began


# -- scale ------------------------------------------------------------------------------------

SCALE_SETUPS: dict[str, tuple[str, tuple[str, str, str], list[str]]] = {
    MESH: ("3 SioMesh nodes, nginx round-robin", ("nginx", "nginx.conf", "127.0.0.1"), ["nginx"]),
    STICKY: (
        "3 plain nodes + AsyncRedisManager, HAProxy cookie",
        ("haproxy", "haproxy-sticky-cookie.cfg", "localhost"),
        ["haproxy", "redis-server"],
    ),
}


def _scale_members(count: int, url: str) -> list[Member]:
    # 1 in 3 polling only (networks that block WebSockets), the rest upgrade.
    return [
        Member(url, ("polling",) if i % 3 == 0 else ("polling", "websocket")) for i in range(count)
    ]


async def _scale_setup(kind: str, params: ScaleParams, workdir: Path) -> Outcome:
    description, balancer, binaries = SCALE_SETUPS[kind]
    outcome = Outcome(setup=kind, description=description)
    outcome.skipped = _missing(binaries)
    if outcome.skipped:
        return outcome
    setup = _start(kind, workdir, balancer)
    fleet = Fleet(
        _scale_members(params.clients, setup.url),
        room=ROOM,
        processes=params.processes,
        connect_timeout=params.connect_timeout,
        call_timeout=params.call_timeout,
    )
    sender = _Sender(setup.url, params.call_timeout)
    try:
        await fleet.start()
        outcome.connect = await fleet.connect()
        c = outcome.connect
        _progress(
            f"  {kind}: {c.joined}/{c.clients} connected and joined in {c.wall_s:.1f} s "
            f"({c.upgraded} upgraded)"
        )
        try:
            await sender.connect()
        except (Exception, asyncio.TimeoutError) as exc:
            outcome.errors.append(f"sender: connect: {type(exc).__name__}: {exc}")
        else:
            await _broadcast_phase(
                fleet, sender, outcome, "scale", params.broadcasts, params.interval,
                params.broadcast_wait,
            )  # fmt: skip
            d = outcome.deliveries["scale"]
            _progress(f"  {kind}: {d.complete}/{d.receivers} got every broadcast once, in order")
        setup.sample(outcome)
    finally:
        await sender.close()
        await fleet.close()
        setup.stop()
    return outcome


# -- latency ----------------------------------------------------------------------------------

LATENCY_SETUPS: dict[str, tuple[str, list[str]]] = {
    MESH: ("3 SioMesh nodes (mesh adapter)", []),
    STICKY: ("3 plain nodes + AsyncRedisManager", ["redis-server"]),
}


async def _latency_setup(kind: str, params: LatencyParams, workdir: Path) -> Outcome:
    description, binaries = LATENCY_SETUPS[kind]
    outcome = Outcome(setup=kind, description=description)
    outcome.skipped = _missing(binaries)
    if outcome.skipped:
        return outcome
    setup = _start(kind, workdir, None)
    assert setup.cluster is not None
    urls = setup.cluster.urls
    members = [Member(urls[i % len(urls)], ("websocket",)) for i in range(params.receivers)]
    fleet = Fleet(
        members,
        room=ROOM,
        processes=latency_processes(params),
        connect_timeout=params.connect_timeout,
        call_timeout=params.call_timeout,
    )
    senders = [_Sender(url, params.call_timeout) for url in urls]  # one per node
    sender = senders[0]
    try:
        await fleet.start()
        outcome.connect = await fleet.connect()
        try:
            await asyncio.gather(*(s.connect() for s in senders))
        except (Exception, asyncio.TimeoutError) as exc:
            outcome.errors.append(f"sender: connect: {type(exc).__name__}: {exc}")
        else:
            wait = params.delivery_wait
            for tag, count, interval in (
                ("warmup", params.warmup, 0.0),
                ("paced", params.paced, params.interval),
                ("burst", params.burst, 0.0),
            ):
                if tag != "burst":
                    await _broadcast_phase(fleet, sender, outcome, tag, count, interval, wait)
                else:
                    # where the box's CPU goes while it delivers as fast as it can: on a
                    # shared machine the clients' share bounds what any server can gain
                    groups = (fleet.pids(), setup.server_pids())
                    before = [_cpu_of(g) for g in groups]
                    await _broadcast_phase(fleet, sender, outcome, tag, count, interval, wait)
                    after = [_cpu_of(g) for g in groups]
                    if None not in before and None not in after:
                        outcome.burst_cpu = (
                            (after[0] or 0.0) - (before[0] or 0.0),
                            (after[1] or 0.0) - (before[1] or 0.0),
                        )
                d = outcome.deliveries[tag]
                _progress(f"  {kind} {tag}: {d.delivered}/{d.expected * d.receivers} delivered")
            if params.rotating:
                await _rotating_phase(fleet, senders, outcome, params.rotating, wait)
                d = outcome.deliveries["rotating"]
                _progress(
                    f"  {kind} rotating: {d.delivered}/{d.expected * d.receivers} delivered, "
                    f"{d.reordered} receivers out of order"
                )
        setup.sample(outcome)
    finally:
        await asyncio.gather(*(s.close() for s in senders))
        await fleet.close()
        setup.stop()
    return outcome


async def _rotating_phase(
    fleet: Fleet, senders: list[_Sender], outcome: Outcome, count: int, wait: float
) -> None:
    """Broadcast i is made by the sender of node i % 3, once broadcast i - 1's call returned
    (so its emit had returned on its node): every receiver must get them in order."""
    began = time.monotonic()
    for i in range(count):
        _, error = await senders[i % len(senders)].broadcast("rotating", 1, 0.0, start=i)
        if error:
            outcome.errors.append(error)
            break
    outcome.spans["rotating_sent"] = time.monotonic() - began
    report = await fleet.expect("rotating", count, timeout=wait)
    outcome.deliveries["rotating"] = report
    outcome.spans["rotating"] = report.last_arrival - began


# -- the table --------------------------------------------------------------------------------

_Row = tuple[str, Callable[[Outcome], Any], bool]


def _ms(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def _total_rss(o: Outcome) -> float | None:
    if not o.node_rss or any(v is None for v in o.node_rss):
        return None
    return sum(v or 0 for v in o.node_rss) / 2**20


def _per_node(o: Outcome) -> str:
    return "/".join("?" if v is None else f"{v / 2**20:.0f}" for v in o.node_rss) or "-"


def _con(o: Outcome) -> ConnectReport:
    if o.connect is None:
        raise KeyError("no connect phase")
    return o.connect


def _d(tag: str, pick: Callable[[DeliveryReport], Any]) -> Callable[[Outcome], Any]:
    return lambda o: pick(o.deliveries[tag])


def _all(pick: Callable[[DeliveryReport], int]) -> Callable[[Outcome], int]:
    def total(o: Outcome) -> int:
        if not o.deliveries:
            raise KeyError("no deliveries")
        return sum(pick(d) for d in o.deliveries.values())

    return total


def _connect_rows(total: int) -> list[_Row]:
    return [
        (f"clients connected (of {total})", lambda o: _con(o).connected, True),
        ("  of which upgraded to WebSocket", lambda o: _con(o).upgraded, True),
        ("  joined the room", lambda o: _con(o).joined, True),
        ("connect failures", lambda o: _con(o).connect_failed, False),
        ("join failures", lambda o: _con(o).join_failed, False),
        ("connect wall, all clients (s)", lambda o: _con(o).wall_s, True),
        ("connect p50 per client (ms)", lambda o: _ms(_con(o).per_client_s, 0.5), True),
        ("connect p99 per client (ms)", lambda o: _ms(_con(o).per_client_s, 0.99), True),
    ]


def _scale_rows(tag: str) -> list[_Row]:
    return [
        ("got every broadcast once, in order", _d(tag, lambda d: d.complete), True),
        ("clients with gaps", _d(tag, lambda d: d.with_gaps), False),
        ("clients with duplicates", _d(tag, lambda d: d.with_duplicates), False),
        ("clients with reordering", _d(tag, lambda d: d.reordered), False),
        ("clients disconnected meanwhile", _d(tag, lambda d: d.dropped), False),
        ("broadcast messages lost", _d(tag, lambda d: d.lost), False),
        ("delivery latency p50 (ms)", _d(tag, lambda d: _ms(d.latencies, 0.5)), True),
        ("delivery latency p99 (ms)", _d(tag, lambda d: _ms(d.latencies, 0.99)), True),
        ("last delivery after (s)", lambda o: o.spans[tag], True),
    ]


def _rotating_rate(o: Outcome) -> float:
    span = o.spans["rotating_sent"]
    return o.deliveries["rotating"].expected / span if span > 0 else math.nan


def _cpu_of(pids: list[int]) -> float | None:
    """CPU seconds used so far by ``pids`` together; None if one cannot be read."""
    total = 0.0
    for pid in pids:
        used = cpu_seconds(pid)
        if used is None:
            return None
        total += used
    return total


def _burst_server_us(o: Outcome) -> float | None:
    """Server CPU (nodes, and redis-server) per burst delivery, µs."""
    delivered = o.deliveries["burst"].delivered
    if o.burst_cpu is None or not delivered:
        return None
    return o.burst_cpu[1] / delivered * 1e6


def _burst_client_share(o: Outcome) -> float | None:
    """The client processes' share of the CPU spent during the burst, %."""
    if o.burst_cpu is None or sum(o.burst_cpu) <= 0:
        return None
    return 100 * o.burst_cpu[0] / sum(o.burst_cpu)


def _burst_rate(o: Outcome) -> float:
    delivered, span = o.deliveries["burst"].delivered, o.spans["burst"]
    return delivered / span if span > 0 else math.nan


def _latency_rows(receivers: int) -> list[_Row]:
    return [
        (f"receivers joined (of {receivers})", lambda o: _con(o).joined, True),
        ("paced: latency p50 (ms)", _d("paced", lambda d: _ms(d.latencies, 0.5)), True),
        ("paced: latency p99 (ms)", _d("paced", lambda d: _ms(d.latencies, 0.99)), True),
        ("paced: messages lost", _d("paced", lambda d: d.lost), False),
        ("burst: deliveries/s", _burst_rate, True),
        ("burst: last delivery after (s)", lambda o: o.spans["burst"], True),
        ("burst: server CPU per delivery (us)", _burst_server_us, True),
        ("burst: client processes' share of CPU (%)", _burst_client_share, True),
        ("burst: messages lost", _d("burst", lambda d: d.lost), False),
        ("rotating: broadcasts/s, each awaited", _rotating_rate, True),
        ("rotating: latency p50 (ms)", _d("rotating", lambda d: _ms(d.latencies, 0.5)), True),
        ("rotating: clients out of order", _d("rotating", lambda d: d.reordered), False),
        ("all phases: clients with duplicates", _all(lambda d: d.with_duplicates), False),
        ("all phases: clients with reordering", _all(lambda d: d.reordered), False),
        ("all phases: clients disconnected", _all(lambda d: d.dropped), False),
    ]


_COST_ROWS: list[_Row] = [
    ("RSS per node (MB)", _per_node, False),
    ("RSS of the 3 nodes (MB)", _total_rss, True),
    ("RSS of redis-server (MB)", lambda o: _mb(o.redis_rss) if o.redis_rss else "-", False),
    ("TCP connections node -> node", lambda o: o.node_links, False),
    ("TCP connections node -> redis", lambda o: o.redis_links, False),
    (
        "gossip suspicions (false ones)",
        lambda o: "-" if o.suspicions is None else f"{o.suspicions} ({o.false_suspicions})",
        False,
    ),
]


def _cell(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _value(row: _Row, o: Outcome) -> Any:
    if o.skipped:
        return "skipped"
    try:
        return row[1](o)
    except KeyError:
        return None  # the phase did not run


def _ratio(a: Any, b: Any) -> str:
    numbers = (int, float)
    if not isinstance(a, numbers) or not isinstance(b, numbers) or isinstance(a, bool):
        return "-"
    if not b or math.isnan(float(b)) or math.isnan(float(a)):
        return "-"
    return f"{a / b:.2f}"


def render(
    title: str, rows: list[_Row], mesh: Outcome, sticky: Outcome, baseline: str = "sticky"
) -> str:
    """The side-by-side table: one row per figure; mesh, ``baseline``, their ratio."""
    width = max(len(r[0]) for r in rows) + 2
    head = f"{'':<{width}}{'mesh':>16}{baseline:>16}{'mesh/' + baseline:>13}"
    lines = [
        title,
        f"  mesh: {mesh.description}",
        f"  {baseline}: {sticky.description}",
        head,
    ]
    lines.append("-" * len(head))
    for row in rows:
        a, b = _value(row, mesh), _value(row, sticky)
        ratio = _ratio(a, b) if row[2] else "-"
        lines.append(f"{row[0]:<{width}}{_cell(a):>16}{_cell(b):>16}{ratio:>13}")
    for o, label in ((mesh, "mesh"), (sticky, baseline)):
        if o.skipped:
            lines.append(f"{label}: skipped ({o.skipped})")
        errors = list(o.errors)
        if o.connect is not None:
            errors += [f"{n} x {e}" for e, n in o.connect.errors.most_common(3)]
        for tag, d in o.deliveries.items():
            errors += [f"{n} x {tag}: disconnected: {e}" for e, n in d.drops.most_common(3)]
            errors += [f"{n} x {tag}: client log: {e}" for e, n in d.client_warnings.most_common(3)]
        for error in errors[:8]:
            lines.append(f"{label} error: {error}")
    return "\n".join(lines)


def _json(outcomes: list[Outcome], params: Any) -> str:
    def summary(o: Outcome) -> dict[str, Any]:
        data: dict[str, Any] = {
            "setup": o.setup,
            "description": o.description,
            "skipped": o.skipped,
            "errors": o.errors,
            "node_rss_bytes": o.node_rss,
            "redis_rss_bytes": o.redis_rss,
            "tcp_node_to_node": o.node_links,
            "tcp_node_to_redis": o.redis_links,
            "spans_s": o.spans,
        }
        if o.connect is not None:
            c = o.connect
            data["connect"] = {
                "clients": c.clients,
                "connected": c.connected,
                "upgraded": c.upgraded,
                "joined": c.joined,
                "connect_failed": c.connect_failed,
                "join_failed": c.join_failed,
                "wall_s": c.wall_s,
                "p50_s": percentile(c.per_client_s, 0.5),
                "p99_s": percentile(c.per_client_s, 0.99),
                "errors": dict(c.errors.most_common(10)),
            }
        data["deliveries"] = {
            tag: {
                k: v
                for k, v in vars(d).items()
                if k not in ("latencies", "drops", "client_warnings")
                and not (isinstance(v, float) and math.isnan(v))
            }
            | {
                "p50_s": percentile(d.latencies, 0.5),
                "p99_s": percentile(d.latencies, 0.99),
                "drops": dict(d.drops),
                "client_warnings": dict(d.client_warnings.most_common(20)),
            }
            for tag, d in o.deliveries.items()
        }
        return data

    report = {"params": vars(params), "setups": [summary(o) for o in outcomes]}
    return json.dumps(report, indent=2, default=str, allow_nan=True)


def _write(out: Path, name: str, table: str, outcomes: list[Outcome], params: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.txt").write_text(table + "\n")
    (out / f"{name}.json").write_text(_json(outcomes, params))
    print(f"wrote {out / f'{name}.txt'}, {out / f'{name}.json'}")


def _quiet() -> None:
    # Clients of a failing setup leave sockets for the GC and log at error level: the table
    # counts them.
    for name in ("asyncio", "engineio.client", "socketio.client"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


#: ``--only`` names: the baseline answers to "sticky" and "redis".
SETUP_NAMES = {"mesh": MESH, "sticky": STICKY, "redis": STICKY}


def _troubled(outcome: Outcome) -> bool:
    """Whether a setup lost, dropped or failed anything (its process logs are then kept)."""
    connect = outcome.connect
    if outcome.errors or (connect is not None and (connect.connect_failed or connect.errors)):
        return True
    return any(d.lost or d.dropped or d.with_gaps for d in outcome.deliveries.values())


def _keep_logs(work: Path, out: Path | None, kind: str) -> None:
    """Copy a troubled setup's node, balancer and redis logs to ``out/logs/<kind>/``."""
    if out is None:
        return
    kept = 0
    for log_file in work.rglob("*.log"):
        target = out / "logs" / kind / log_file.relative_to(work)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log_file, target)
        kept += 1
    if kept:
        _progress(f"  {kind}: something was lost or failed: its logs are in {out / 'logs' / kind}")


async def _both(
    run: Callable[[str, Path], Any],
    only: Collection[str],
    describe: dict[str, str],
    out: Path | None = None,
) -> tuple[Outcome, Outcome]:
    with tempfile.TemporaryDirectory(prefix="siomesh-bench-") as tmp:
        results: list[Outcome] = []
        for index, kind in enumerate((MESH, STICKY), start=1):
            if only and kind not in only:
                results.append(Outcome(kind, describe[kind], skipped="not selected by --only"))
                continue
            _progress(f"[{index}/2] {kind}")
            try:
                outcome = await run(kind, Path(tmp) / kind)
                results.append(outcome)
                if _troubled(outcome):
                    _keep_logs(Path(tmp) / kind, out, kind)
            except (ProcessError, OSError) as exc:  # a node, balancer or redis did not start
                reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
                _progress(f"  {kind}: did not start: {exc}")
                results.append(Outcome(kind, describe[kind], skipped=f"did not start: {reason}"))
    return results[0], results[1]


def run_scale(params: ScaleParams, out: Path, only: Collection[str] = ()) -> int:
    """Run the scale scenario, print its table, write ``scale.txt`` and ``scale.json``.
    ``only``: run just these setups (:data:`SETUP_NAMES` values)."""
    _quiet()
    raise_fd_limit()  # the nodes and balancers inherit it
    _progress(f"siomesh bench scale: {params.clients} clients, {params.broadcasts} room broadcasts")
    describe = {k: v[0] for k, v in SCALE_SETUPS.items()}
    mesh, sticky = asyncio.run(_both(lambda k, w: _scale_setup(k, params, w), only, describe, out))
    polling = len(range(0, params.clients, 3))
    title = (
        f"scale: {params.clients} clients ({polling} polling only, "
        f"{params.clients - polling} polling then WebSocket) in one room, "
        f"{params.broadcasts} room broadcasts {params.interval * 1000:.0f} ms apart"
    )
    rows = [*_connect_rows(params.clients), *_scale_rows("scale"), *_COST_ROWS]
    table = render(title, rows, mesh, sticky)
    print(table)
    _write(out, "scale", table, [mesh, sticky], params)
    return 0


def run_latency(params: LatencyParams, out: Path, only: Collection[str] = ()) -> int:
    """Run the latency scenario, print its table, write ``latency.txt`` and ``latency.json``.
    ``only``: run just these setups (:data:`SETUP_NAMES` values)."""
    _quiet()
    raise_fd_limit()
    _progress(f"siomesh bench latency: {params.receivers} receivers over 3 nodes")
    describe = {k: v[0] for k, v in LATENCY_SETUPS.items()}
    mesh, sticky = asyncio.run(
        _both(lambda k, w: _latency_setup(k, params, w), only, describe, out)
    )
    title = (
        f"latency: {params.receivers} WebSocket receivers over 3 nodes, one sender; "
        f"{params.paced} broadcasts {params.interval * 1000:.0f} ms apart, "
        f"then a burst of {params.burst}; then {params.rotating} by a sender on each node in turn"
    )

    rows = [*_latency_rows(params.receivers), *_COST_ROWS]
    table = render(title, rows, mesh, sticky, baseline="redis")
    print(table)
    _write(out, "latency", table, [mesh, sticky], params)
    return 0
