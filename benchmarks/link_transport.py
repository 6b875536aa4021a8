"""What the peer links' WebSocket transport costs, against plain TCP (issue 14's "plain-TCP link
framing" idea, measured before building it).

A link carries sealed frames between two nodes: the dialler writes with aiohttp's WebSocket
client, the acceptor reads and writes through uvicorn's WebSocket implementation (ASGI
messages). This script sends N binary messages of SIZE bytes, at most INFLIGHT unanswered, to an
echo server on loopback and reports the CPU seconds (utime + stime, from /proc and getrusage)
each side spends per message:

* ``ws <impl>``: aiohttp client -> ``uvicorn --ws <impl>`` ASGI echo (what a link is today;
  uvicorn's ``auto`` is ``websockets-sansio`` when ``websockets`` is installed);
* ``tcp``: an asyncio Protocol client -> an asyncio Protocol echo, 4-byte length prefix (the
  least a plain-TCP link could cost).

Usage: .venv/bin/python benchmarks/link_transport.py [N] [SIZE]
Loopback only, a free port per server, every server ended by its pid.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import struct
import subprocess
import sys
import time

INFLIGHT = 16

_ECHO_WS = r"""
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        m = await receive()
        if m["type"] != "websocket.receive":
            return
        await send({"type": "websocket.send", "bytes": m["bytes"]})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", ws=sys.argv[2])
"""

_ECHO_TCP = r"""
import asyncio, struct, sys
class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, bytearray()
    def data_received(self, data):
        self.buffer += data
        end = 0
        while len(self.buffer) - end >= 4:
            size = struct.unpack_from(">I", self.buffer, end)[0]
            if len(self.buffer) - end < 4 + size:
                break
            end += 4 + size
        if end:
            self.transport.write(bytes(self.buffer[:end]))
            del self.buffer[:end]
async def main():
    await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", int(sys.argv[1]))
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _ws_client(port: int, n: int, size: int) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"ws://127.0.0.1:{port}/", compress=0) as ws,
    ):
        payload = b"x" * size
        sent = got = 0
        room = asyncio.Event()
        room.set()

        async def reader() -> None:
            nonlocal got
            while got < n:
                await ws.receive()
                got += 1
                room.set()

        task = asyncio.ensure_future(reader())
        while sent < n:
            await room.wait()
            while sent - got < INFLIGHT and sent < n:
                await ws.send_bytes(payload)
                sent += 1
            room.clear()
        await asyncio.wait_for(task, 60)


async def _tcp_client(port: int, n: int, size: int) -> None:
    loop = asyncio.get_running_loop()
    frame = struct.pack(">I", size) + b"x" * size
    done = loop.create_future()
    room = asyncio.Event()
    room.set()
    got = 0

    class Client(asyncio.Protocol):
        buffer = bytearray()

        def data_received(self, data: bytes) -> None:
            nonlocal got
            self.buffer += data
            end = 0
            while len(self.buffer) - end >= 4 + size:
                end += 4 + size
                got += 1
            del self.buffer[:end]
            room.set()
            if got >= n and not done.done():
                done.set_result(None)

    transport, _ = await loop.create_connection(Client, "127.0.0.1", port)
    sent = 0
    while sent < n:
        await room.wait()
        while sent - got < INFLIGHT and sent < n:
            transport.write(frame)  # one write per message, as the WebSocket client does
            sent += 1
        room.clear()
    await asyncio.wait_for(done, 60)
    transport.close()


def _run(kind: str, impl: str, n: int, size: int) -> None:
    port = _free_port()
    argv = [sys.executable, "-W", "ignore", "-c", _ECHO_WS if kind == "ws" else _ECHO_TCP]
    argv += [str(port), impl] if kind == "ws" else [str(port)]
    server = subprocess.Popen(argv)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        server0, client0, began = _cpu_of(server.pid), _own_cpu(), time.monotonic()
        client = _ws_client if kind == "ws" else _tcp_client
        asyncio.run(asyncio.wait_for(client(port, n, size), 120))
        wall = time.monotonic() - began
        server_us = (_cpu_of(server.pid) - server0) / n * 1e6
        client_us = (_own_cpu() - client0) / n * 1e6
    finally:
        server.kill()
        server.wait(10)
    label = f"{kind} {impl}".strip()
    print(
        f"{label:<24} {n} x {size} B  {wall:5.2f} s  server {server_us:5.1f} us/msg  "
        f"client {client_us:5.1f} us/msg  both {server_us + client_us:5.1f} us/msg",
        flush=True,
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    for impl in ("websockets-sansio", "websockets", "wsproto"):
        _run("ws", impl, n, size)
    _run("tcp", "", n, size)


if __name__ == "__main__":
    main()
