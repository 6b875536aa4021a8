"""Orphaned long-polls (siomesh.orphans) on a real python-engineio socket."""

from __future__ import annotations

import asyncio

import engineio
import pytest
from engineio import exceptions as eio_exceptions
from engineio import packet, payload
from engineio.async_socket import AsyncSocket

from siomesh.engine import EngineSeam
from siomesh.orphans import MAX_POLL_PACKETS, ORPHANED, guard_poll, take_queued

T = 2.0


def make_socket(ping_interval: float = 25, ping_timeout: float = 20) -> AsyncSocket:
    server = engineio.AsyncServer(
        async_mode="asgi", ping_interval=ping_interval, ping_timeout=ping_timeout
    )
    seam = EngineSeam(server, None)
    seam.on_poll("orphans.guard", guard_poll)
    seam.install(lambda: "sid-under-test")
    socket = AsyncSocket(server, "sid-under-test")
    server.sockets[socket.sid] = socket  # the seam composes its pipeline
    return socket


def msg(text: str) -> packet.Packet:
    return packet.Packet(packet.MESSAGE, data=text)


async def orphanable_poll(socket: AsyncSocket, orphaned: asyncio.Event) -> list[packet.Packet]:
    """Run ``socket.poll`` the way a forwarded request does: with ORPHANED set."""
    token = ORPHANED.set(orphaned)
    try:
        result: list[packet.Packet] = await socket.poll()
        return result
    finally:
        ORPHANED.reset(token)


def test_guard_is_installed_once() -> None:
    socket = make_socket()
    guarded = socket.poll
    socket.server.sockets.pop(socket.sid)
    socket.server.sockets[socket.sid] = socket  # registered again: not wrapped twice
    assert socket.poll is guarded


async def test_without_orphaned_the_original_poll_runs() -> None:
    socket = make_socket()
    assert ORPHANED.get() is None
    await socket.queue.put(msg("a"))
    await socket.queue.put(msg("b"))
    packets = await asyncio.wait_for(socket.poll(), T)
    assert [p.data for p in packets] == ["a", "b"]
    assert socket.queue.empty()


async def test_without_orphaned_a_timeout_is_engineios_queue_empty() -> None:
    socket = make_socket(ping_interval=0.02, ping_timeout=0.02)
    with pytest.raises(eio_exceptions.QueueEmpty):
        await asyncio.wait_for(socket.poll(), T)


async def test_without_orphaned_a_packet_arriving_later_is_returned() -> None:
    socket = make_socket()
    waiting = asyncio.ensure_future(socket.poll())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await socket.queue.put(msg("late"))
    assert [p.data for p in await asyncio.wait_for(waiting, T)] == ["late"]


async def test_orphaned_poll_returns_nothing_and_leaves_the_queue() -> None:
    socket = make_socket()
    orphaned = asyncio.Event()
    waiting = asyncio.ensure_future(orphanable_poll(socket, orphaned))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # held like a long-poll
    orphaned.set()  # the forwarder went away before any packet
    assert await asyncio.wait_for(waiting, T) == []
    # a packet sent afterwards stays for the client's next (retried) poll
    await socket.queue.put(msg("for the retry"))
    await asyncio.sleep(0.01)
    assert socket.queue.qsize() == 1
    packets = await asyncio.wait_for(socket.poll(), T)
    assert [p.data for p in packets] == ["for the retry"]


async def test_already_orphaned_poll_returns_at_once() -> None:
    socket = make_socket()
    orphaned = asyncio.Event()
    orphaned.set()
    assert await asyncio.wait_for(orphanable_poll(socket, orphaned), T) == []
    await socket.queue.put(msg("kept"))
    assert socket.queue.qsize() == 1


async def test_orphanable_poll_returns_queued_packets() -> None:
    socket = make_socket()
    orphaned = asyncio.Event()
    for text in ("a", "b", "c"):
        await socket.queue.put(msg(text))
    packets = await asyncio.wait_for(orphanable_poll(socket, orphaned), T)
    assert [p.data for p in packets] == ["a", "b", "c"]
    assert socket.queue.empty()
    # every get was matched by task_done: join() does not hang
    await asyncio.wait_for(socket.queue.join(), T)


async def test_orphanable_poll_returns_a_packet_arriving_before_the_event() -> None:
    socket = make_socket()
    orphaned = asyncio.Event()
    waiting = asyncio.ensure_future(orphanable_poll(socket, orphaned))
    await asyncio.sleep(0.01)
    await socket.queue.put(msg("in time"))
    assert [p.data for p in await asyncio.wait_for(waiting, T)] == ["in time"]
    orphaned.set()  # too late to matter


async def test_orphanable_poll_stops_at_the_close_marker() -> None:
    socket = make_socket()
    await socket.queue.put(msg("last"))
    await socket.queue.put(None)  # python-engineio's "socket closing" marker
    packets = await asyncio.wait_for(orphanable_poll(socket, asyncio.Event()), T)
    assert [p.data for p in packets] == ["last"]
    # the marker is put back for the next poll, which returns nothing
    assert await asyncio.wait_for(orphanable_poll(socket, asyncio.Event()), T) == []


async def test_orphanable_poll_times_out_like_engineio() -> None:
    socket = make_socket(ping_interval=0.02, ping_timeout=0.02)
    with pytest.raises(eio_exceptions.QueueEmpty):
        await asyncio.wait_for(orphanable_poll(socket, asyncio.Event()), T)
    await socket.queue.put(msg("after the timeout"))
    assert socket.queue.qsize() == 1  # the timed-out getter took nothing


async def test_two_waiting_polls_one_orphaned() -> None:
    """python-engineio lets two polls wait; the orphaned one must not take the packet."""
    socket = make_socket()
    orphaned = asyncio.Event()
    orphan = asyncio.ensure_future(orphanable_poll(socket, orphaned))
    await asyncio.sleep(0.01)
    retry = asyncio.ensure_future(socket.poll())
    await asyncio.sleep(0.01)
    orphaned.set()
    assert await asyncio.wait_for(orphan, T) == []
    await socket.queue.put(msg("ack"))
    assert [p.data for p in await asyncio.wait_for(retry, T)] == ["ack"]


@pytest.mark.parametrize("forwarded", [False, True])
async def test_a_burst_is_returned_at_most_16_packets_per_poll_in_order(forwarded: bool) -> None:
    """python-engineio's client refuses a payload of more than 16 packets and drops the
    connection; the surplus waits for the next poll, in order, behind nothing newer."""
    assert payload.Payload.max_decode_packets == MAX_POLL_PACKETS
    socket = make_socket()
    for i in range(40):
        await socket.queue.put(msg(str(i)))
    got: list[list[str]] = []
    for _ in range(3):
        if forwarded:
            packets = await asyncio.wait_for(orphanable_poll(socket, asyncio.Event()), T)
        else:
            packets = await asyncio.wait_for(socket.poll(), T)
        # what the client decodes: one payload per poll
        encoded = payload.Payload(packets=packets).encode()
        got.append([str(p.data) for p in payload.Payload(encoded_payload=encoded).packets])
        if len(got) == 2:
            await socket.queue.put(msg("late"))  # queued after the burst: comes after it
    assert [len(g) for g in got] == [16, 16, 8]
    assert [x for g in got for x in g] == [str(i) for i in range(40)]
    assert [p.data for p in await asyncio.wait_for(socket.poll(), T)] == ["late"]


async def test_an_orphaned_poll_takes_nothing_left_over() -> None:
    socket = make_socket()
    for i in range(20):
        await socket.queue.put(msg(str(i)))
    assert len(await asyncio.wait_for(socket.poll(), T)) == 16
    orphaned = asyncio.Event()
    orphaned.set()
    assert await asyncio.wait_for(orphanable_poll(socket, orphaned), T) == []
    await socket.queue.put(msg("20"))
    assert [p.data for p in take_queued(socket)] == ["16", "17", "18", "19", "20"]
    assert socket.queue.empty()
