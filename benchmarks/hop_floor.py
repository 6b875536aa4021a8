"""The least a forward could cost in Python: a bare hop over plain TCP, against the mesh's.

``benchmarks/hop_cpu.py`` measures the mesh's hop (peer links over WebSocket, streams, tasks).
This script measures, with the same client and the same figure, a forward reduced to what it
must do: the forwarding node (``forwarder_app``, a plain ASGI app under uvicorn, no SioMesh)
reads the request, packs its meta with the mesh's own binary codec, seals it with the mesh's
frame MAC and writes it on one plain TCP connection; the owner (``owner_app``: the bench's
SioMesh echo app, plus a TCP listener) opens the frame in ``data_received``, runs the request
through its app on a task, and writes the sealed answer back at once; the forwarder wakes the
request's future and answers the client. No WebSocket layer, no writer or reader task, no
batching, no departure watch, no orphan guard, no at-most-once bookkeeping: what is left is a
floor, not a design.

    extra CPU per forwarded request = (cpu(forwarded phase) - cpu(direct phase)) / requests

Usage: .venv/bin/python benchmarks/hop_floor.py [SESSIONS] [ROUNDS] [PAIRS]
Loopback only, free ports, every process ended by pid.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

from siomesh.links.frames import (
    FrameType,
    RequestMeta,
    ResponseMeta,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    open_frame,
    seal_frame,
)

KEY = b"k" * 32
_LEN = struct.Struct(">I")
Scope = dict[str, Any]


class _Framed(asyncio.Protocol):
    """Length-prefixed sealed frames in both directions on one connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._send_seq = 0
        self._recv_seq = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def send(self, kind: FrameType, stream: int, payload: bytes) -> None:
        self._send_seq += 1
        frame = seal_frame(KEY, int(kind), stream, self._send_seq, payload)
        assert self.transport is not None
        self.transport.write(_LEN.pack(len(frame)) + frame)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            (size,) = _LEN.unpack_from(buffer)
            if len(buffer) < 4 + size:
                return
            frame = bytes(buffer[4 : 4 + size])
            del buffer[: 4 + size]
            self._recv_seq += 1
            kind, stream, payload = open_frame(KEY, frame, self._recv_seq)
            self.frame(kind, stream, payload)

    def frame(self, kind: FrameType, stream: int, payload: bytes) -> None:
        raise NotImplementedError


# -- the owner: the bench's echo app plus a TCP listener --------------------------------------


class _OwnerSide(_Framed):
    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app

    def frame(self, kind: FrameType, stream: int, payload: bytes) -> None:
        asyncio.get_running_loop().create_task(self.serve(stream, payload))

    async def serve(self, stream: int, payload: bytes) -> None:
        request, body = decode_request(payload)
        scope = request.scope("http")
        if body or scope["method"] == "POST":
            scope["headers"].append((b"content-length", b"%d" % len(body)))
        delivered = False
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    meta = ResponseMeta(int(start["status"]), list(start.get("headers", [])))
                    answer = encode_response(meta, b"".join(chunks), binary=True)
                    self.send(FrameType.RESPONSE, stream, answer)

        await self.app(scope, receive, send)


def _owner_app() -> Any:
    from siomesh.benchkit.apps.echo import app as inner

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":

            async def started(message: dict[str, Any]) -> None:
                if message["type"] == "lifespan.startup.complete":
                    port = int(os.environ["FLOOR_PORT"])
                    loop = asyncio.get_running_loop()
                    await loop.create_server(lambda: _OwnerSide(inner), "127.0.0.1", port)
                await send(message)

            await inner(scope, receive, started)
            return
        await inner(scope, receive, send)

    return app


# -- the forwarder: a bare ASGI app that forwards every Engine.IO request ---------------------


class _ForwarderSide(_Framed):
    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[int, asyncio.Future[bytes]] = {}

    def frame(self, kind: FrameType, stream: int, payload: bytes) -> None:
        future = self.pending.pop(stream, None)
        if future is not None and not future.done():
            future.set_result(payload)


def _forwarder_app() -> Any:
    link: list[_ForwarderSide] = []
    ids = itertools.count(1)

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    loop = asyncio.get_running_loop()
                    port = int(os.environ["FLOOR_PORT"])
                    _, proto = await loop.create_connection(_ForwarderSide, "127.0.0.1", port)
                    link.append(proto)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        meta = RequestMeta.from_scope(scope, headers)
        stream = next(ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        side = link[0]
        side.pending[stream] = future
        side.send(FrameType.REQUEST, stream, encode_request(meta, b"".join(chunks), binary=True))
        timer = loop.call_later(60, future.cancel)
        try:
            payload = await future
        finally:
            timer.cancel()
        response, body = decode_response(payload)
        out = [(k, v) for k, v in response.headers if k != b"content-length"]
        out.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        await send({"type": "http.response.body", "body": body})

    return app


if os.environ.get("FLOOR_ROLE") == "owner":
    owner_app = _owner_app()
elif os.environ.get("FLOOR_ROLE") == "forwarder":
    forwarder_app = _forwarder_app()


async def main(sessions: int, rounds: int, pairs: int) -> None:
    from hop_cpu import alternate, open_session, report_extra

    from siomesh.benchkit.ports import free_ports
    from siomesh.benchkit.procs import node_argv, start_mesh, start_process, stop_all, wait_http

    here = str(Path(__file__).resolve().parent)
    (floor_port,) = free_ports(1)
    with tempfile.TemporaryDirectory() as work:
        env = {"FLOOR_ROLE": "owner", "FLOOR_PORT": str(floor_port)}
        cluster = start_mesh(1, Path(work), app="hop_floor:owner_app", env=env, pythonpath=[here])
        forwarder = None
        try:
            (owner,) = cluster.nodes
            (port,) = free_ports(1)
            fenv = dict(os.environ, FLOOR_ROLE="forwarder", FLOOR_PORT=str(floor_port))
            fenv["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [fenv.get("PYTHONPATH")])])
            forwarder = start_process(
                "forwarder",
                node_argv("hop_floor:forwarder_app", port),
                log_path=Path(work) / "forwarder.log",
                env=fenv,
            )
            sids = await asyncio.gather(*(open_session(owner.port) for _ in range(sessions)))
            # the forwarder answers nothing of its own: its readiness is a forwarded handshake
            wait_http(
                f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling",
                timeout=30,
                procs=[forwarder],
            )
            pids = [owner.proc.pid, forwarder.pid]
            requests = 2 * sessions * rounds
            direct, forwarded = await alternate(sids, owner.port, port, rounds, pairs, pids)
            print(f"{sessions} sessions x {rounds} rounds x 2 requests, {pairs} pairs (floor)")
            report_extra(direct, forwarded, requests)
        finally:
            if forwarder is not None:
                stop_all([forwarder], grace=0.0)
            cluster.stop()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*(args + [20, 200, 5][len(args) :])))
