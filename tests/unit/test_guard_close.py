"""``PollRefusals.guard_close``: what an Engine.IO CLOSE from the client does to a session."""

from __future__ import annotations

import asyncio
from typing import Any

from engineio import packet as eio_packet

from siomesh.sessions import ENGINE_CLOSED, PollRefusals


class Socket:
    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.received: list[int] = []

    async def receive(self, pkt: Any) -> None:
        self.received.append(pkt.packet_type)


async def test_a_close_is_served_and_noted_for_recovery() -> None:
    socket = Socket("s1")
    receive = PollRefusals().guard_close(socket, socket.receive)
    await receive(eio_packet.Packet(eio_packet.MESSAGE, "2"))
    assert not getattr(socket, ENGINE_CLOSED, False)
    await receive(eio_packet.Packet(eio_packet.CLOSE))
    assert socket.received == [eio_packet.MESSAGE, eio_packet.CLOSE]
    assert getattr(socket, ENGINE_CLOSED) is True


async def test_a_close_after_a_refusal_is_swallowed() -> None:
    refusals = PollRefusals()
    socket = Socket("s2")
    receive = refusals.guard_close(socket, socket.receive)
    refused = refusals._refusing["s2"] = asyncio.Event()  # as drop() sets it up
    await receive(eio_packet.Packet(eio_packet.CLOSE))
    assert socket.received == []
    assert refused.is_set()  # the client learnt: the drop goes on at once
    assert not getattr(socket, ENGINE_CLOSED, False)
