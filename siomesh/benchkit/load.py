"""Socket.IO client load: N concurrent python-socketio AsyncClients, K acked round trips each.

Reusable by benchmarks: no pytest imports. Every wait is bounded (connect, each call, the
disconnect), so a run always ends; failures are counted and described, never raised.

About disconnect: python-socketio's ``disconnect()`` on the polling transport waits for the
pending long-poll GET, which the server only answers after ``ping_interval + ping_timeout``
(up to 45 s with defaults). Here each client sends its close packets and then closes its
engine.io transport without waiting for that poll (``abort=True``); the server has already been
told the client is leaving, and it drops the parked GET on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import socketio

__all__ = ["LoadResult", "Payload", "close_client", "run_load", "text_payload"]

Payload = Callable[[int, int], Any]


def text_payload(client: int, round_trip: int) -> Any:
    """A small JSON payload unique to (client, round trip)."""
    return {"client": client, "n": round_trip, "text": f"hello {client}/{round_trip} ✓"}


@dataclass
class LoadResult:
    """The outcome of one :func:`run_load`."""

    clients: int
    round_trips: int
    connected: int = 0
    failed: int = 0
    completed_round_trips: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    nodes_seen: set[str] = field(default_factory=set)
    wall_time: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.failed == 0
            and not self.errors
            and self.connected == self.clients
            and self.completed_round_trips == self.clients * self.round_trips
        )

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def summary(self) -> str:
        return (
            f"{self.connected}/{self.clients} connected, {self.failed} failed, "
            f"{self.completed_round_trips}/{self.clients * self.round_trips} round trips, "
            f"p50 {self.percentile(0.5) * 1000:.1f} ms, p99 {self.percentile(0.99) * 1000:.1f} ms, "
            f"nodes {sorted(self.nodes_seen)}, {self.wall_time:.2f} s; "
            f"errors: {self.errors[:5]}"
        )


async def close_client(client: socketio.AsyncClient, timeout: float = 5.0) -> None:
    """Disconnect, without waiting for a parked long-poll (see the module docstring).

    The close packets go out with the client's own ``disconnect()``; once its write loop has
    sent them, the parked GET is cut by closing the client's HTTP session.
    """
    eio = client.eio
    if not client.connected and eio.state != "connected":
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown(), timeout)
        return
    writer = eio.write_loop_task
    closing = asyncio.ensure_future(client.disconnect())
    waits: list[asyncio.Future[Any]] = [closing]
    if writer is not None:
        waits.append(writer)
    await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if not closing.done() and eio.http is not None:
        with contextlib.suppress(Exception):
            await eio.http.close()
    done, _ = await asyncio.wait([closing], timeout=timeout)
    if not done:
        closing.cancel()
        await asyncio.wait([closing], timeout=1)
    elif not closing.cancelled():
        closing.exception()  # retrieved: a failed disconnect is not a load failure
    if eio.http is not None and not eio.http.closed:
        with contextlib.suppress(Exception):
            await eio.http.close()


async def _one_client(
    index: int,
    url: str,
    *,
    transports: Sequence[str],
    round_trips: int,
    payload: Payload,
    connect_timeout: float,
    call_timeout: float,
    socketio_path: str,
    headers: dict[str, str] | None,
    result: LoadResult,
    start: asyncio.Event,
) -> None:
    client = socketio.AsyncClient(reconnection=False)
    try:
        await start.wait()
        try:
            await asyncio.wait_for(
                client.connect(
                    url,
                    transports=list(transports),
                    socketio_path=socketio_path,
                    headers=headers or {},
                    wait_timeout=connect_timeout,
                ),
                connect_timeout + 1,
            )
        except Exception as exc:
            result.failed += 1
            result.errors.append(f"client {index}: connect: {exc!r}")
            return
        result.connected += 1
        try:
            node = await client.call("whoami", timeout=call_timeout)
            result.nodes_seen.add(str(node))
            for n in range(round_trips):
                sent = payload(index, n)
                began = time.perf_counter()
                got = await client.call("echo", sent, timeout=call_timeout)
                result.latencies.append(time.perf_counter() - began)
                if got != sent:
                    raise AssertionError(f"reply differs: sent {_short(sent)}, got {_short(got)}")
                result.completed_round_trips += 1
        except Exception as exc:
            result.failed += 1
            result.errors.append(f"client {index}: {exc!r}")
    finally:
        await close_client(client)


@contextlib.contextmanager
def settled_heap() -> Iterator[None]:
    """Measure with this process's heap settled: collect the garbage earlier phases left (a
    storm of 1,000 clients leaves hundreds of thousands of objects), then freeze what is left
    so that the collector's full passes during the measurement scan only what it allocates.

    Without it, one full collection of the bench's own heap (about 120 ms on 2 cores after the
    connects scenario's storms) stalled every client of whichever wave it hit, and that wave
    was the mesh's p99; the setups measured first (on a fresh heap) never met it. Unfrozen
    (and collectable again) on exit. Not thread-safe (the interpreter's collector is global).
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 120 else f"{text[:100]}... ({len(text)} chars)"


async def run_load(
    url: str,
    *,
    clients: int = 50,
    round_trips: int = 5,
    transports: Sequence[str] = ("polling",),
    payload: Payload = text_payload,
    connect_timeout: float = 15.0,
    call_timeout: float = 15.0,
    socketio_path: str = "socket.io",
    headers: dict[str, str] | None = None,
    deadline: float = 120.0,
) -> LoadResult:
    """Run ``clients`` concurrent clients against ``url``; each connects with ``transports``,
    asks ``whoami``, then does ``round_trips`` acked ``echo`` calls of ``payload(client, n)``
    and checks every reply equals what it sent. Never raises for client failures; returns
    when every client is done or ``deadline`` seconds have passed (the rest count as failed).
    """
    result = LoadResult(clients=clients, round_trips=round_trips)
    start = asyncio.Event()
    tasks = [
        asyncio.ensure_future(
            _one_client(
                i,
                url,
                transports=transports,
                round_trips=round_trips,
                payload=payload,
                connect_timeout=connect_timeout,
                call_timeout=call_timeout,
                socketio_path=socketio_path,
                headers=headers,
                result=result,
                start=start,
            )
        )
        for i in range(clients)
    ]
    with settled_heap():
        began = time.perf_counter()
        start.set()
        _, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=10)
        result.failed += len(pending)
        result.errors.append(f"{len(pending)} clients still running after {deadline} s")
    result.wall_time = time.perf_counter() - began
    return result
