"""What SioMesh adds to the traffic it serves itself (no forward), against plain python-socketio.

The price of the mesh where nothing is forwarded: behind an owner-aware balancer config, for
every request that lands on its session's owner, and for every WebSocket once it is served
where it landed. One node runs the bench's control app (python-socketio without SioMesh,
``siomesh.benchkit.apps.plain``), the other the bench's SioMesh echo app, alone in its
cluster; both answer the same ``echo`` event. SESSIONS sessions on each run ROUNDS acked round
trips, alternating between the two nodes (PAIRS of phases), and each node's utime + stime is
read from /proc:

* ``polling``: the lean HTTP client of ``benchmarks/hop_cpu.py`` (a GET held, a POST, the GET's
  answer): CPU per request;
* ``websocket``: aiohttp WebSocket clients straight to ``transport=websocket`` (one message
  each way): CPU per round trip.

Printed: the CPU per request (or round trip) of each, and their ratio (medians over the pairs).

Usage: .venv/bin/python benchmarks/mesh_overhead.py [SESSIONS] [ROUNDS] [PAIRS] [polling|websocket]
(defaults 20 200 5 polling). To compare two builds, run it from outside both checkouts with
``PYTHONPATH=<checkout>`` (see ``hop_cpu.py``). Loopback only, free ports, ended by pid.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from hop_cpu import cpu_seconds, open_session, phase

from siomesh.benchkit.procs import start_mesh


async def _open_ws(http: aiohttp.ClientSession, port: int) -> aiohttp.ClientWebSocketResponse:
    url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    ws = await http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5))
    opened = await ws.receive(timeout=10)
    assert str(opened.data).startswith("0{"), opened
    await ws.send_str("40")
    connected = await ws.receive(timeout=10)
    assert str(connected.data).startswith("40"), connected
    return ws


async def _ws_rounds(ws: aiohttp.ClientWebSocketResponse, rounds: int) -> None:
    for n in range(1, rounds + 1):
        await ws.send_str(f'42{n}["echo","x"]')
        while True:
            message = await ws.receive(timeout=30)
            data = str(message.data)
            if data == "2":  # the server's ping
                await ws.send_str("3")
                continue
            assert data.startswith(f"43{n}"), message
            break


async def _ws_phase(sockets: list[aiohttp.ClientWebSocketResponse], rounds: int, pid: int) -> float:
    before = cpu_seconds(pid)
    await asyncio.gather(*(_ws_rounds(ws, rounds) for ws in sockets))
    return cpu_seconds(pid) - before


async def _measure(
    run_plain: Callable[[], Awaitable[float]],
    run_mesh: Callable[[], Awaitable[float]],
    units: int,
    pairs: int,
) -> tuple[list[float], list[float]]:
    await run_plain()  # warm-up
    await run_mesh()
    plain_us: list[float] = []
    mesh_us: list[float] = []
    for i in range(pairs):
        plain_us.append(await run_plain() / units * 1e6)
        mesh_us.append(await run_mesh() / units * 1e6)
        print(f"pair {i + 1}: plain {plain_us[-1]:6.1f} us, mesh {mesh_us[-1]:6.1f} us", flush=True)
    return plain_us, mesh_us


async def main(sessions: int, rounds: int, pairs: int, transport: str) -> None:
    if transport not in ("polling", "websocket"):
        raise SystemExit(f"transport must be polling or websocket, not {transport!r}")
    with tempfile.TemporaryDirectory() as work:
        plain = start_mesh(1, Path(work), app="siomesh.benchkit.apps.plain:app")
        try:
            mesh = start_mesh(1, Path(work))
        except BaseException:
            plain.stop()
            raise
        try:
            (p,), (m,) = plain.nodes, mesh.nodes
            if transport == "polling":
                ps = await asyncio.gather(*(open_session(p.port) for _ in range(sessions)))
                ms = await asyncio.gather(*(open_session(m.port) for _ in range(sessions)))
                unit = "request"
                plain_us, mesh_us = await _measure(
                    lambda: phase(ps, p.port, rounds, 1, [p.proc.pid]),
                    lambda: phase(ms, m.port, rounds, 1, [m.proc.pid]),
                    2 * sessions * rounds,
                    pairs,
                )
            else:
                unit = "round trip"
                async with aiohttp.ClientSession() as http:
                    pw: list[Any] = [await _open_ws(http, p.port) for _ in range(sessions)]
                    mw: list[Any] = [await _open_ws(http, m.port) for _ in range(sessions)]
                    plain_us, mesh_us = await _measure(
                        lambda: _ws_phase(pw, rounds, p.proc.pid),
                        lambda: _ws_phase(mw, rounds, m.proc.pid),
                        sessions * rounds,
                        pairs,
                    )
                    for ws in pw + mw:
                        await ws.close()
            a, b = statistics.median(plain_us), statistics.median(mesh_us)
            # /proc counts CPU in clock ticks (10 ms): a tiny run can read 0 for a phase
            ratios = [y / x for x, y in zip(plain_us, mesh_us, strict=True) if x > 0] or [
                float("nan")
            ]
            print(f"{transport}: {sessions} sessions x {rounds} round trips, {pairs} pairs")
            print(
                f"CPU per {unit}: plain python-socketio {a:.1f} us, SioMesh {b:.1f} us "
                f"(+{b - a:.1f} us); ratio median {statistics.median(ratios):.3f} "
                f"(range {min(ratios):.3f}-{max(ratios):.3f})"
            )
        finally:
            mesh.stop()
            plain.stop()


if __name__ == "__main__":
    numbers = [int(a) for a in sys.argv[1:4]]
    kind = sys.argv[4] if len(sys.argv) > 4 else "polling"
    asyncio.run(main(*(numbers + [20, 200, 5][len(numbers) :]), kind))
