"""Many python-socketio clients that join one room and record every broadcast they receive,
spread over several client processes so that the client side is not the bottleneck.

The parent (:class:`Fleet`) starts worker processes (``multiprocessing``, spawn) and talks to
each over a pipe, one step at a time: ``connect`` (every client connects at once, then joins
the room), ``expect`` (wait until every client has ``count`` broadcasts of a tag, or a timeout,
then report what each got), ``close``. Every wait on either side is bounded; a worker that does
not answer in time counts all its clients as failed, and is ended by its pid at the end.

Broadcasts are ``b`` events carrying ``[tag, i, t]`` (see
:mod:`~siomesh.benchkit.apps.events`): ``i`` numbers them from 0, ``t`` is the server's
``time.monotonic()`` at the emit. ``CLOCK_MONOTONIC`` is shared by every process of a Linux
machine, so ``arrival - t`` is the delivery latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import multiprocessing
import multiprocessing.connection
import resource
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import socketio

from .load import close_client

__all__ = [
    "ConnectReport",
    "DeliveryReport",
    "Fleet",
    "Member",
    "percentile",
    "raise_fd_limit",
]

# Clients per worker process when the caller does not say.
CLIENTS_PER_PROCESS = 250
MAX_PROCESSES = 8
#: How many packets a client accepts in one long-poll response (python-engineio's default: 16).
MAX_PACKETS_PER_POLL = 100_000
_POLL = 0.05
_REFUSED = "Connection refused by the server"


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return int(soft)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank), NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass(frozen=True)
class Member:
    """One client: where it connects and with which Engine.IO transports."""

    url: str
    transports: tuple[str, ...]


@dataclass
class _Outcome:
    connected: bool
    joined: bool = False
    connect_s: float | None = None
    connected_at: float | None = None
    transport: str | None = None
    error: str | None = None


@dataclass
class _Got:
    received: int
    missing: int
    duplicates: int
    reordered: bool
    dropped: str | None
    dropped_at: float
    latencies: list[float]
    last_arrival: float


@dataclass
class ConnectReport:
    """The connect phase: every client connects at once, then joins the room."""

    clients: int
    connected: int = 0
    joined: int = 0
    upgraded: int = 0
    connect_failed: int = 0
    join_failed: int = 0
    wall_s: float = math.nan
    per_client_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return self.clients - self.joined


@dataclass
class DeliveryReport:
    """One tag's broadcasts as the clients that joined the room received them."""

    expected: int
    receivers: int = 0
    complete: int = 0
    with_gaps: int = 0
    with_duplicates: int = 0
    reordered: int = 0
    dropped: int = 0
    delivered: int = 0
    lost: int = 0
    latencies: list[float] = field(default_factory=list)
    last_arrival: float = math.nan
    unanswered: int = 0
    #: why the clients that were disconnected meanwhile were (the reason python-socketio
    #: gives, and the transport they were on), with how many
    drops: Counter[str] = field(default_factory=Counter)
    #: warnings the clients' Engine.IO logged meanwhile (why transports gave up), with how many
    client_warnings: Counter[str] = field(default_factory=Counter)
    #: when (``time.monotonic()``) each of those clients was disconnected
    drop_times: list[float] = field(default_factory=list)


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return text if len(text) <= 100 else text[:97] + "..."


class _Receiver:
    def __init__(self, member: Member) -> None:
        self.member = member
        self.client = socketio.AsyncClient(reconnection=False)
        # tag -> [(i, sent at, arrived at)] in arrival order
        self.got: dict[str, list[tuple[int, float, float]]] = {}
        self.dropped: str | None = None
        self.dropped_at = math.nan
        self.client.on("b", self._on_broadcast)
        self.client.on("disconnect", self._on_disconnect)

    async def _on_broadcast(self, item: Any) -> None:
        now = time.monotonic()
        try:
            tag, index, sent = str(item[0]), int(item[1]), float(item[2])
        except (TypeError, ValueError, IndexError):
            return
        self.got.setdefault(tag, []).append((index, sent, now))

    async def _on_disconnect(self, *args: Any) -> None:
        transport = "?"
        with contextlib.suppress(Exception):
            transport = str(self.client.transport())
        self.dropped = f"{args[0] if args else 'disconnected'} ({transport})"
        self.dropped_at = time.monotonic()

    async def connect(self, room: str | None, timeout: float, call_timeout: float) -> _Outcome:
        began = time.monotonic()
        try:
            await asyncio.wait_for(
                self.client.connect(
                    self.member.url, transports=list(self.member.transports), wait_timeout=timeout
                ),
                timeout + 1,
            )
        except (Exception, asyncio.TimeoutError) as exc:
            reason = _reason(exc)
            if reason.endswith(_REFUSED):
                # python-engineio's words for any failed handshake request whose error has no
                # text: in practice its own 5 s request timeout (a refused TCP connect has text)
                reason += " (a handshake request that failed without a message: its 5 s timeout)"
            return _Outcome(connected=False, error=f"connect: {reason}")
        ended = time.monotonic()
        outcome = _Outcome(
            connected=True, connect_s=ended - began, connected_at=ended, transport=None
        )
        with contextlib.suppress(Exception):
            outcome.transport = str(self.client.transport())
        if room is None:
            outcome.joined = True
            return outcome
        try:
            outcome.joined = bool(await self.client.call("join", room, timeout=call_timeout))
            if not outcome.joined:
                outcome.error = "join: refused"
        except Exception as exc:
            outcome.error = f"join: {_reason(exc)}"
        return outcome

    def count(self, tag: str) -> int:
        return len(self.got.get(tag, ()))

    def report(self, tag: str, expected: int) -> _Got:
        items = self.got.get(tag, [])
        seen: set[int] = set()
        order: list[int] = []
        latencies: list[float] = []
        for index, sent, arrived in items:
            if index in seen:
                continue
            seen.add(index)
            order.append(index)
            latencies.append(arrived - sent)
        return _Got(
            received=len(seen & set(range(expected))),
            missing=len(set(range(expected)) - seen),
            duplicates=len(items) - len(seen),
            reordered=any(a >= b for a, b in itertools.pairwise(order)),
            dropped=self.dropped,
            dropped_at=self.dropped_at,
            latencies=latencies,
            last_arrival=max((arrived for _, _, arrived in items), default=math.nan),
        )


class _Tally(logging.Handler):
    """Counts the Engine.IO client's warnings (why a transport gave up), by message."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.counts[record.getMessage()[:100]] += 1


_TALLY = _Tally()


def _recv(conn: multiprocessing.connection.Connection, timeout: float) -> Any:
    try:
        if conn.poll(timeout):
            return conn.recv()
    except (EOFError, OSError):
        pass
    return None


async def _work(
    conn: multiprocessing.connection.Connection,
    members: list[Member],
    room: str | None,
    connect_timeout: float,
    call_timeout: float,
    idle_timeout: float,
) -> None:
    receivers = [_Receiver(m) for m in members]
    try:
        conn.send(("ready",))
        message = await asyncio.to_thread(_recv, conn, idle_timeout)
        if not message or message[0] != "connect":
            return
        outcomes = await asyncio.gather(
            *(r.connect(room, connect_timeout, call_timeout) for r in receivers)
        )
        conn.send(("connected", list(outcomes)))
        joined = [r for r, o in zip(receivers, outcomes, strict=True) if o.joined]
        for _ in range(10_000):  # one command per round; the parent sends a handful
            message = await asyncio.to_thread(_recv, conn, idle_timeout)
            if not message or message[0] != "expect":
                return
            _, tag, count, timeout, settle = message
            deadline = time.monotonic() + float(timeout)
            # clients that were disconnected meanwhile will get no more: do not wait for them
            while time.monotonic() < deadline and any(
                r.count(tag) < count and not r.dropped for r in joined
            ):
                await asyncio.sleep(_POLL)
            await asyncio.sleep(float(settle))  # late duplicates show up here
            got = [
                r.report(tag, count) if o.joined else None
                for r, o in zip(receivers, outcomes, strict=True)
            ]
            conn.send(("delivered", (got, dict(_TALLY.counts))))
            _TALLY.counts.clear()
    finally:
        closing = asyncio.gather(*(close_client(r.client) for r in receivers))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(closing, 30)
        with contextlib.suppress(Exception):
            conn.send(("closed",))


def _worker(
    conn: multiprocessing.connection.Connection,
    members: list[Member],
    room: str | None,
    connect_timeout: float,
    call_timeout: float,
    idle_timeout: float,
) -> None:
    # Engine.IO logs every failed or closed connection: count the reasons, print nothing.
    for name in ("engineio.client", "socketio.client", "asyncio"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        logger.handlers = [_TALLY]
    raise_fd_limit()
    # python-engineio's client refuses a polling response of more than 16 packets ("Unexpected
    # packet from server", then a disconnect), while its server sends its whole queue in one
    # response: any polling client that falls 17 messages behind would be cut, in every setup.
    # Lift the client's limit so that what is measured is the servers' delivery.
    from engineio import payload

    payload.Payload.max_decode_packets = MAX_PACKETS_PER_POLL
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(
            _work(conn, members, room, connect_timeout, call_timeout, idle_timeout)
        )
    finally:
        loop.close()
        conn.close()


@dataclass
class _Proc:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    members: list[Member]
    alive: bool = True


class Fleet:
    """``members`` spread over ``processes`` client processes (default: one per 250 clients,
    at most 8). Use :meth:`start`, :meth:`connect`, :meth:`expect` (any number of times), and
    always :meth:`close` (in ``finally``): it ends every worker by its pid."""

    def __init__(
        self,
        members: Sequence[Member],
        *,
        room: str | None,
        processes: int | None = None,
        connect_timeout: float = 30.0,
        call_timeout: float = 15.0,
        idle_timeout: float = 600.0,
    ) -> None:
        count = processes or min(MAX_PROCESSES, math.ceil(len(members) / CLIENTS_PER_PROCESS))
        count = max(1, min(count, len(members) or 1))
        self.members = list(members)
        self.room = room
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.idle_timeout = idle_timeout
        self.slices = [self.members[i::count] for i in range(count)]
        self.procs: list[_Proc] = []
        self._joined: list[list[bool]] = []

    def pids(self) -> list[int]:
        """The client processes' pids (started ones)."""
        return [p.process.pid for p in self.procs if p.process.pid is not None]

    async def _gather(self, procs: list[_Proc], kind: str, timeout: float) -> dict[int, Any]:
        """The next message of each of ``procs`` (by index), waiting at most ``timeout`` s."""
        found: dict[int, Any] = {}
        pending = {id(p.conn): i for i, p in enumerate(procs) if p.alive}
        conns = {id(p.conn): p.conn for p in procs}
        deadline = time.monotonic() + timeout
        for _ in range(len(procs) + 1):
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                break
            ready = await asyncio.to_thread(
                multiprocessing.connection.wait, [conns[k] for k in pending], left
            )
            for conn in ready:
                index = pending.pop(id(conn))
                message = _recv(conn, 0)  # type: ignore[arg-type]
                if message and message[0] == kind:
                    found[index] = message[1] if len(message) > 1 else None
                else:
                    procs[index].alive = False
        for index in pending.values():
            procs[index].alive = False
        return found

    async def start(self, timeout: float = 60.0) -> None:
        """Start the client processes and wait until each has imported what it needs."""
        ctx = multiprocessing.get_context("spawn")
        for members in self.slices:
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=_worker,
                args=(
                    child,
                    members,
                    self.room,
                    self.connect_timeout,
                    self.call_timeout,
                    self.idle_timeout,
                ),
                daemon=True,
            )
            process.start()
            child.close()
            self.procs.append(_Proc(process, parent, members))
        await self._gather(self.procs, "ready", timeout)

    def _send(self, message: tuple[Any, ...]) -> None:
        for proc in self.procs:
            if proc.alive:
                try:
                    proc.conn.send(message)
                except OSError:
                    proc.alive = False

    async def connect(self) -> ConnectReport:
        """Every client connects at once (a connect storm), then joins the room."""
        report = ConnectReport(clients=len(self.members))
        began = time.monotonic()
        self._send(("connect",))
        answers = await self._gather(
            self.procs, "connected", self.connect_timeout + self.call_timeout + 30
        )
        last = math.nan
        self._joined = []
        for index, proc in enumerate(self.procs):
            outcomes: list[_Outcome] = answers.get(index) or []
            if len(outcomes) != len(proc.members):
                report.connect_failed += len(proc.members)
                report.errors["client process did not answer"] += len(proc.members)
                self._joined.append([False] * len(proc.members))
                continue
            self._joined.append([o.joined for o in outcomes])
            for o in outcomes:
                if o.connected:
                    report.connected += 1
                    if o.connect_s is not None:
                        report.per_client_s.append(o.connect_s)
                    if o.connected_at is not None:
                        last = o.connected_at if math.isnan(last) else max(last, o.connected_at)
                    if o.transport == "websocket":
                        report.upgraded += 1
                    if o.joined:
                        report.joined += 1
                    else:
                        report.join_failed += 1
                else:
                    report.connect_failed += 1
                if o.error:
                    report.errors[o.error] += 1
        report.wall_s = last - began
        return report

    async def expect(
        self, tag: str, count: int, *, timeout: float, settle: float = 0.5
    ) -> DeliveryReport:
        """Wait (at most ``timeout`` s, then ``settle`` s more) until every client in the room
        has ``count`` broadcasts tagged ``tag``; report what each got."""
        report = DeliveryReport(expected=count)
        self._send(("expect", tag, count, timeout, settle))
        answers = await self._gather(self.procs, "delivered", timeout + settle + 30)
        last = math.nan
        for index, proc in enumerate(self.procs):
            joined = self._joined[index] if index < len(self._joined) else []
            answer = answers.get(index)
            got: list[_Got | None] | None = answer[0] if answer else None
            if answer:
                report.client_warnings.update(answer[1])
            if got is None or len(got) != len(proc.members):
                report.unanswered += sum(joined)
                report.receivers += sum(joined)
                report.lost += count * sum(joined)
                continue
            for g in got:
                if g is None:
                    continue
                report.receivers += 1
                report.delivered += g.received
                report.lost += g.missing
                report.latencies.extend(g.latencies)
                report.with_gaps += g.missing > 0
                report.with_duplicates += g.duplicates > 0
                report.reordered += g.reordered
                if g.dropped:
                    report.dropped += 1
                    report.drops[g.dropped] += 1
                    report.drop_times.append(g.dropped_at)
                report.complete += not g.missing and not g.duplicates and not g.reordered
                if not math.isnan(g.last_arrival):
                    last = g.last_arrival if math.isnan(last) else max(last, g.last_arrival)
        report.last_arrival = last
        return report

    async def close(self, timeout: float = 45.0) -> None:
        """Disconnect every client and end every worker process (by pid), bounded."""
        self._send(("close",))
        with contextlib.suppress(Exception):
            await self._gather(self.procs, "closed", timeout)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            proc.process.join(max(0.0, deadline - time.monotonic()))
            if proc.process.is_alive():
                proc.process.terminate()
                proc.process.join(2)
            if proc.process.is_alive():
                proc.process.kill()
                proc.process.join(2)
            proc.conn.close()
