"""The engine seam (siomesh/engine.py) is the only module that touches python-engineio's and
python-socketio's objects, and its pipeline's order is data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import engineio
from engineio import packet
from engineio.async_socket import AsyncSocket

from siomesh.engine import PACKET_IN_ORDER, EngineSeam

PACKAGE = Path(__file__).resolve().parents[2] / "siomesh"
#: a library object's private name (``sio._send_packet``, ``self._eio._async``, ...)
PRIVATE = re.compile(r"\b_?(eio|sio|server|socket|manager|current)\._[A-Za-z]")
#: a library object's method or state replaced (``socket.receive = ...``)
REPLACED = re.compile(
    r"\b_?(socket|eio|sio|manager|server)\.(receive|send|poll|generate_id|sockets|"
    r"basic_enter_room|basic_leave_room|manager|environ)\s*=[^=]"
)


def test_no_module_but_the_seam_touches_the_libraries_internals() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "engine.py" and path.parent == PACKAGE:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            if PRIVATE.search(code) or REPLACED.search(code):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not offenders, "go through siomesh/engine.py:\n" + "\n".join(offenders)


def _seam() -> tuple[EngineSeam, Any]:
    server = engineio.AsyncServer(async_mode="asgi")
    seam = EngineSeam(server, None)
    return seam, server


async def test_packet_in_hooks_run_in_the_declared_order_whatever_the_registration() -> None:
    seam, server = _seam()
    seen: list[str] = []

    def hook(name: str) -> Any:
        def factory(socket: Any, inner: Any) -> Any:
            async def receive(pkt: Any) -> Any:
                seen.append(name)
                return await inner(pkt)

            return receive

        return factory

    seam.on_packet_in("later.unknown", hook("later.unknown"))
    for name in reversed(PACKET_IN_ORDER):  # registered innermost first
        seam.on_packet_in(name, hook(name))
    seam.install(lambda: "s1")
    socket = AsyncSocket(server, "s1")
    server.sockets["s1"] = socket
    await socket.receive(packet.Packet(packet.PONG))
    assert seen == [*PACKET_IN_ORDER, "later.unknown"]
    # registered again (a takeover re-adds a sid): composed once
    server.sockets.pop("s1")
    server.sockets["s1"] = socket
    seen.clear()
    await socket.receive(packet.Packet(packet.PONG))
    assert seen == [*PACKET_IN_ORDER, "later.unknown"]


def test_sessions_added_and_removed_are_reported() -> None:
    seam, server = _seam()
    events: list[tuple[str, str]] = []
    seam.on_session_added(lambda sid, socket: events.append(("added", sid)))
    seam.on_session_removed(lambda sid: events.append(("removed", sid)))
    seam.install(lambda: "x")
    server.sockets["a"] = AsyncSocket(server, "a")
    del server.sockets["a"]
    server.sockets["b"] = AsyncSocket(server, "b")
    server.sockets.pop("b")
    server.sockets.pop("b", None)
    assert events == [("added", "a"), ("removed", "a"), ("added", "b"), ("removed", "b")]
    assert server.generate_id() == "x"


async def test_override_send_is_removed_again() -> None:
    seam, server = _seam()
    seam.install(lambda: "s")
    socket = AsyncSocket(server, "s")
    server.sockets["s"] = socket
    original = socket.send
    dropped: list[Any] = []

    def gate(send: Any) -> Any:
        async def gated(pkt: Any) -> None:
            dropped.append(pkt)

        return gated

    restore = seam.override_send(socket, gate)
    await socket.send(packet.Packet(packet.NOOP))
    assert len(dropped) == 1 and socket.queue.empty()
    restore()
    assert socket.send == original


async def test_fan_out_queues_every_packet_in_order_through_the_pipeline_and_skips_the_gone() -> (
    None
):
    seam, server = _seam()
    through: list[str] = []

    def counting(socket: Any, inner: Any) -> Any:
        async def send(pkt: Any) -> None:
            through.append(socket.sid)
            await inner(pkt)

        return send

    seam.on_packet_out("sessions.calls", counting)
    seam.install(lambda: "x")
    for sid in ("a", "b", "c"):
        socket = AsyncSocket(server, sid)
        socket.connected = True
        server.sockets[sid] = socket
    server.sockets["c"].closed = True
    packets = [packet.Packet(packet.MESSAGE, '2["e",1]'), packet.Packet(packet.MESSAGE, b"\x01")]
    sent = await seam.fan_out(["a", "gone", "b", "c"], packets)
    assert sent == 2
    assert through == ["a", "a", "b", "b"]  # the session's own send pipeline, in order
    for sid in ("a", "b"):
        queue = server.sockets[sid].queue
        assert [queue.get_nowait().data for _ in range(queue.qsize())] == ['2["e",1]', b"\x01"]
    assert server.sockets["c"].queue.empty()
