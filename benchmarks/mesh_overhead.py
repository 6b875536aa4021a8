"""What SioMesh adds to a request it serves itself (no forward), against plain python-socketio.

The price of the mesh where nothing is forwarded: behind an owner-aware balancer config, or for
every request that lands on its session's owner. One node runs the bench's control app
(python-socketio without SioMesh, ``siomesh.benchkit.apps.plain``), the other the bench's
SioMesh echo app, alone in its cluster; both answer the same ``echo`` event. The lean client of
``benchmarks/hop_cpu.py`` opens SESSIONS polling sessions on each and runs ROUNDS acked round
trips per session (a GET held, a POST, the GET's answer), alternating between the two nodes
(PAIRS of phases), and reads each node's utime + stime from /proc:

    CPU per request, plain and mesh, and their ratio (medians over the pairs)

Usage: .venv/bin/python benchmarks/mesh_overhead.py [SESSIONS] [ROUNDS] [PAIRS]
(defaults 20 200 5). To compare two builds, run it from outside both checkouts with
``PYTHONPATH=<checkout>`` (see ``hop_cpu.py``). Loopback only, free ports, ended by pid.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from hop_cpu import open_session, phase

from siomesh.benchkit.procs import start_mesh


async def main(sessions: int, rounds: int, pairs: int) -> None:
    with tempfile.TemporaryDirectory() as work:
        plain = start_mesh(1, Path(work), app="siomesh.benchkit.apps.plain:app")
        try:
            mesh = start_mesh(1, Path(work))
        except BaseException:
            plain.stop()
            raise
        try:
            (p,), (m,) = plain.nodes, mesh.nodes
            plain_sids = await asyncio.gather(*(open_session(p.port) for _ in range(sessions)))
            mesh_sids = await asyncio.gather(*(open_session(m.port) for _ in range(sessions)))
            requests = 2 * sessions * rounds
            await phase(plain_sids, p.port, rounds, 1, [p.proc.pid])  # warm-up
            await phase(mesh_sids, m.port, rounds, 1, [m.proc.pid])
            plain_us: list[float] = []
            mesh_us: list[float] = []
            for i in range(pairs):
                plain_us.append(
                    await phase(plain_sids, p.port, rounds, 1, [p.proc.pid]) / requests * 1e6
                )
                mesh_us.append(
                    await phase(mesh_sids, m.port, rounds, 1, [m.proc.pid]) / requests * 1e6
                )
                print(
                    f"pair {i + 1}: plain {plain_us[-1]:6.1f} us/request, "
                    f"mesh {mesh_us[-1]:6.1f} us/request",
                    flush=True,
                )
            a, b = statistics.median(plain_us), statistics.median(mesh_us)
            # /proc counts CPU in clock ticks (10 ms): a tiny run can read 0 for a phase
            ratios = [y / x for x, y in zip(plain_us, mesh_us, strict=True) if x > 0] or [
                float("nan")
            ]
            print(f"{sessions} sessions x {rounds} rounds x 2 requests, {pairs} pairs")
            print(
                f"CPU per request: plain python-socketio {a:.1f} us, SioMesh {b:.1f} us "
                f"(+{b - a:.1f} us); ratio median {statistics.median(ratios):.3f} "
                f"(range {min(ratios):.3f}-{max(ratios):.3f})"
            )
        finally:
            mesh.stop()
            plain.stop()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*(args + [20, 200, 5][len(args) :])))
