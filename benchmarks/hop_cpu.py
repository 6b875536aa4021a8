"""What one forwarded polling request costs the two nodes, in CPU, against the same request sent
to the owner directly (issue 14: "measure the hop, then cut it").

Two SioMesh nodes (``uvicorn siomesh.benchkit.apps.echo:app``, uvloop) on loopback. A lean
client (hand-written HTTP/1.1 on asyncio streams, so that it takes little of the machine)
opens SESSIONS Engine.IO polling sessions on node A, then runs phases of ROUNDS round trips
per session: a long-poll GET is held, a POST carries ``42N["echo", ...]`` and the GET returns
its ack, as python-socketio's polling client does. In a ``direct`` phase both requests go to A
(the owner); in a ``forwarded`` phase both go to B, which forwards them to A over its peer link.
The phases alternate (PAIRS of each), and each phase reads both nodes' utime + stime from
/proc. The figure is the extra CPU of the two nodes per forwarded request:

    (cpu(forwarded phase) - cpu(direct phase)) / requests

Each pair's line also splits the CPU by process (owner, forwarder). Few sessions (``4``) put
about two frames in each link message, as the bench's 50 clients over three nodes do; more
(``20``) let the links batch about seven. ``benchmarks/hop_floor.py`` measures the same figure for
a bare forward over plain TCP, the floor this one is compared with (docs/benchmark.md).

Usage: .venv/bin/python benchmarks/hop_cpu.py [SESSIONS] [ROUNDS] [PAIRS]
(defaults 20 200 5). ``HOP_ENV="SIOMESH_X=1 ..."`` sets node options; ``HOP_ONLY=direct`` or
``forwarded`` runs one kind of phase, printing the node pids first and waiting ``HOP_DELAY``
seconds (to attach py-spy). To compare two builds, run it from outside both checkouts with
``PYTHONPATH=<checkout>``: the current directory comes first on the nodes' ``sys.path``.
Loopback only, free ports, both nodes ended by pid (``MeshCluster.stop``).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from siomesh.benchkit.procs import start_mesh

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its reaped children, in seconds (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


class Conn:
    """One HTTP/1.1 keep-alive connection: one request at a time, Content-Length bodies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int):
        self.reader, self.writer, self.port = reader, writer, port

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, port)

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await asyncio.wait_for(self.reader.readline(), 30)
        status = int(status_line.split()[1])
        length = 0
        chunked = False
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 30)
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value:
                chunked = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            return status, b"".join(parts)
        return status, await asyncio.wait_for(self.reader.readexactly(length), 30)

    def close(self) -> None:
        self.writer.close()


async def open_session(port: int) -> str:
    conn = await Conn.open(port)
    try:
        status, body = await conn.request("GET", "/socket.io/?EIO=4&transport=polling")
        assert status == 200, (status, body)
        sid = json.loads(body[1:])["sid"]
        target = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
        status, body = await conn.request("POST", target, b"40")
        assert status == 200 and body.lower() == b"ok", (status, body)
        status, body = await conn.request("GET", target)
        assert status == 200 and body.startswith(b"40"), (status, body)
        return str(sid)
    finally:
        conn.close()


async def session_rounds(sid: str, port: int, rounds: int, first_id: int) -> None:
    """``rounds`` acked echoes through ``port``: GET held, then POST, then the GET's answer."""
    target = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    poller, poster = await Conn.open(port), await Conn.open(port)
    try:
        for n in range(first_id, first_id + rounds):
            poll = asyncio.ensure_future(poller.request("GET", target))
            await asyncio.sleep(0)  # the GET leaves first and is held
            status, body = await poster.request("POST", target, f'42{n}["echo","x"]'.encode())
            assert status == 200 and body.lower() == b"ok", (status, body)
            status, body = await poll
            # the ack; a ping may come first (then poll once more)
            while not body.startswith(f"43{n}".encode()):
                assert status == 200 and body in (b"2", b"6"), (status, body)
                if body == b"2":
                    await poster.request("POST", target, b"3")
                status, body = await poller.request("GET", target)
    finally:
        poller.close()
        poster.close()


#: CPU seconds of each process in the last :func:`phase`, by pid
LAST_PHASE: dict[int, float] = {}


async def phase(sids: list[str], port: int, rounds: int, first_id: int, pids: list[int]) -> float:
    """Run one phase through ``port``; the CPU seconds ``pids`` spent (each: LAST_PHASE)."""
    before = {p: cpu_seconds(p) for p in pids}
    await asyncio.gather(*(session_rounds(s, port, rounds, first_id) for s in sids))
    LAST_PHASE.clear()
    LAST_PHASE.update({p: cpu_seconds(p) - before[p] for p in pids})
    return sum(LAST_PHASE.values())


async def alternate(
    sids: list[str], direct_port: int, forwarded_port: int, rounds: int, pairs: int, pids: list[int]
) -> tuple[list[float], list[float]]:
    """``pairs`` direct then forwarded phases (after one warm-up of each), a line per pair with
    the per-process split (``pids``: the owner first, then the forwarder); the CPU seconds of
    each phase, both processes."""
    requests = 2 * len(sids) * rounds
    await phase(sids, forwarded_port, rounds, 1, pids)  # warm-up: links, caches
    await phase(sids, direct_port, rounds, 1, pids)
    direct: list[float] = []
    forwarded: list[float] = []
    for i in range(pairs):
        start = time.monotonic()
        direct.append(await phase(sids, direct_port, rounds, 1, pids))
        owner_direct = LAST_PHASE[pids[0]]
        forwarded.append(await phase(sids, forwarded_port, rounds, 1, pids))
        split = [LAST_PHASE[p] / requests * 1e6 for p in pids]
        print(
            f"pair {i + 1}: direct {direct[-1] / requests * 1e6:6.1f} us/request "
            f"(owner {owner_direct / requests * 1e6:.1f}), "
            f"forwarded {forwarded[-1] / requests * 1e6:6.1f} us/request "
            f"(owner {split[0]:.1f}, forwarder {split[1]:.1f}) "
            f"({time.monotonic() - start:.1f} s)",
            flush=True,
        )
    return direct, forwarded


def report_extra(direct: list[float], forwarded: list[float], requests: int) -> None:
    """The figure: extra CPU per forwarded request, median and range over the pairs."""
    extra = [(f - d) / requests * 1e6 for d, f in zip(direct, forwarded, strict=True)]
    print(
        "extra CPU per forwarded request (both processes): "
        f"median {statistics.median(extra):.1f} us "
        f"(range {min(extra):.1f}-{max(extra):.1f}); "
        f"a direct request: {statistics.median(direct) / requests * 1e6:.1f} us"
    )


async def main(sessions: int, rounds: int, pairs: int) -> None:
    with tempfile.TemporaryDirectory() as work:
        # HOP_ENV="NAME=value ...": settings for the two nodes (e.g. SIOMESH_* options)
        env = dict(e.split("=", 1) for e in os.environ.get("HOP_ENV", "").split() if e)
        cluster = start_mesh(2, Path(work), env=env)
        try:
            owner, other = cluster.nodes
            pids = [n.proc.pid for n in cluster.nodes]
            sids = await asyncio.gather(*(open_session(owner.port) for _ in range(sessions)))
            requests = 2 * sessions * rounds
            # HOP_ONLY=direct|forwarded: one kind of phase only (to attach a profiler to the
            # node pids printed, after HOP_DELAY seconds)
            only = os.environ.get("HOP_ONLY", "")
            first = other.port if only == "forwarded" else owner.port
            second = owner.port if only == "direct" else other.port
            if only:
                print(f"node pids: {' '.join(map(str, pids))}", flush=True)
                await asyncio.sleep(float(os.environ.get("HOP_DELAY", "0")))
            direct, forwarded = await alternate(sids, first, second, rounds, pairs, pids)
            forwards = cluster.total("forwarded")
            frames = cluster.total("link_frames_sent")
            messages = cluster.total("link_messages_sent")
            print(
                f"{sessions} sessions x {rounds} rounds x 2 requests, {pairs} pairs; requests "
                f"forwarded in all: {forwards}; link frames {frames} in {messages} messages"
            )
            report_extra(direct, forwarded, requests)
        finally:
            cluster.stop()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*(args + [20, 200, 5][len(args) :])))
