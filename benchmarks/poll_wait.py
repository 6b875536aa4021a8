"""What one long-poll wait costs in CPU: python-engineio's own poll, and siomesh's guarded poll
for a local and for a forwarded request (siomesh.orphans).

A consumer task polls one python-engineio socket in a loop; the producer queues one packet,
then yields twice, so that every packet is one whole wait (the poll parks, the packet wakes
it). Reported: process CPU microseconds per packet, producer included (the same in every row),
three rounds each.

* ``engineio``: a socket without siomesh's seam (python-engineio's ``AsyncSocket.poll``);
* ``guarded, local``: siomesh's poll hooks installed, no forwarder (``ORPHANED`` unset);
* ``guarded, forwarded``: as a forwarded request runs it (``ORPHANED`` set to its stream's
  end signal).

Usage: .venv/bin/python benchmarks/poll_wait.py [N]
No network; runs on uvloop as uvicorn does.
"""

from __future__ import annotations

import asyncio
import sys
import time

import engineio
import uvloop
from engineio import packet
from engineio.async_socket import AsyncSocket

from siomesh.engine import EngineSeam
from siomesh.links.link import EndSignal
from siomesh.orphans import ORPHANED, guard_poll
from siomesh.sessions import count_acks_polled


def make_socket(guarded: bool) -> AsyncSocket:
    server = engineio.AsyncServer(async_mode="asgi")
    if guarded:
        seam = EngineSeam(server, None)
        seam.on_poll("orphans.guard", guard_poll)
        seam.on_poll("sessions.acks", count_acks_polled)
        seam.install(lambda: "sid")
    socket = AsyncSocket(server, "sid")
    server.sockets[socket.sid] = socket
    return socket


async def cpu_per_wait(guarded: bool, forwarded: bool, n: int) -> float:
    socket = make_socket(guarded)
    pkt = packet.Packet(packet.MESSAGE, data="x")

    async def consumer() -> None:
        got = 0
        while got < n:
            token = ORPHANED.set(EndSignal()) if forwarded else None
            try:
                got += len(await socket.poll())
            finally:
                if token is not None:
                    ORPHANED.reset(token)

    task = asyncio.ensure_future(consumer())
    await asyncio.sleep(0)
    began = time.process_time()
    for _ in range(n):
        socket.queue.put_nowait(pkt)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await task
    return (time.process_time() - began) / n * 1e6


async def main(n: int) -> None:
    rows = [("engineio", False, False), ("guarded, local", True, False)]
    rows.append(("guarded, forwarded", True, True))
    for name, guarded, forwarded in rows:
        figures = [await cpu_per_wait(guarded, forwarded, n) for _ in range(3)]
        print(f"{name:20s} " + "  ".join(f"{f:6.2f}" for f in figures) + "  µs CPU per wait")


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))
