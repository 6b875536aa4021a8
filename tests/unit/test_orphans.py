"""Orphaned long-polls (siomesh.orphans) on a real python-engineio socket."""

from __future__ import annotations

import asyncio

import engineio
import pytest
from engineio import exceptions as eio_exceptions
from engineio import packet, payload
from engineio.async_socket import AsyncSocket

from siomesh.engine import EngineSeam
from siomesh.links.link import EndSignal
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


async def orphanable_poll(socket: AsyncSocket, orphaned: EndSignal) -> list[packet.Packet]:
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
    orphaned = EndSignal()
    waiting = asyncio.ensure_future(orphanable_poll(socket, orphaned))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # held like a long-poll
    orphaned.fire()  # the forwarder went away before any packet
    assert await asyncio.wait_for(waiting, T) == []
    # a packet sent afterwards stays for the client's next (retried) poll
    await socket.queue.put(msg("for the retry"))
    await asyncio.sleep(0.01)
    assert socket.queue.qsize() == 1
    packets = await asyncio.wait_for(socket.poll(), T)
    assert [p.data for p in packets] == ["for the retry"]


async def test_already_orphaned_poll_returns_at_once() -> None:
    socket = make_socket()
    orphaned = EndSignal()
    orphaned.fire()
    assert await asyncio.wait_for(orphanable_poll(socket, orphaned), T) == []
    await socket.queue.put(msg("kept"))
    assert socket.queue.qsize() == 1


async def test_orphanable_poll_returns_queued_packets() -> None:
    socket = make_socket()
    orphaned = EndSignal()
    for text in ("a", "b", "c"):
        await socket.queue.put(msg(text))
    packets = await asyncio.wait_for(orphanable_poll(socket, orphaned), T)
    assert [p.data for p in packets] == ["a", "b", "c"]
    assert socket.queue.empty()
    # every get was matched by task_done: join() does not hang
    await asyncio.wait_for(socket.queue.join(), T)


async def test_orphanable_poll_returns_a_packet_arriving_before_the_event() -> None:
    socket = make_socket()
    orphaned = EndSignal()
    waiting = asyncio.ensure_future(orphanable_poll(socket, orphaned))
    await asyncio.sleep(0.01)
    await socket.queue.put(msg("in time"))
    assert [p.data for p in await asyncio.wait_for(waiting, T)] == ["in time"]
    orphaned.fire()  # too late to matter


async def test_orphanable_poll_stops_at_the_close_marker() -> None:
    socket = make_socket()
    await socket.queue.put(msg("last"))
    await socket.queue.put(None)  # python-engineio's "socket closing" marker
    packets = await asyncio.wait_for(orphanable_poll(socket, EndSignal()), T)
    assert [p.data for p in packets] == ["last"]
    # the marker is put back for the next poll, which returns nothing
    assert await asyncio.wait_for(orphanable_poll(socket, EndSignal()), T) == []


async def test_orphanable_poll_times_out_like_engineio() -> None:
    socket = make_socket(ping_interval=0.02, ping_timeout=0.02)
    with pytest.raises(eio_exceptions.QueueEmpty):
        await asyncio.wait_for(orphanable_poll(socket, EndSignal()), T)
    await socket.queue.put(msg("after the timeout"))
    assert socket.queue.qsize() == 1  # the timed-out getter took nothing


@pytest.mark.parametrize("same_turn", [False, True])
async def test_two_waiting_polls_one_orphaned(same_turn: bool) -> None:
    """python-engineio lets two polls wait; the orphaned one must not take the packet, also
    when the packet arrives and the forwarder goes away in the same loop turn, before the
    orphaned poll resumes (the packet wakes its getter, the first waiter, which is cut before
    it runs)."""
    socket = make_socket()
    orphaned = EndSignal()
    orphan = asyncio.ensure_future(orphanable_poll(socket, orphaned))
    await asyncio.sleep(0.01)
    retry = asyncio.ensure_future(socket.poll())
    await asyncio.sleep(0.01)
    if same_turn:
        socket.queue.put_nowait(msg("ack"))
        orphaned.fire()
        assert await asyncio.wait_for(orphan, T) == []
    else:
        orphaned.fire()
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
            packets = await asyncio.wait_for(orphanable_poll(socket, EndSignal()), T)
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
    orphaned = EndSignal()
    orphaned.fire()
    assert await asyncio.wait_for(orphanable_poll(socket, orphaned), T) == []
    await socket.queue.put(msg("20"))
    assert [p.data for p in take_queued(socket)] == ["16", "17", "18", "19", "20"]
    assert socket.queue.empty()


@pytest.mark.parametrize("forwarded", [False, True])
async def test_a_poll_cancelled_from_elsewhere_is_engineios_queue_empty(forwarded: bool) -> None:
    socket = make_socket()
    poll = orphanable_poll(socket, EndSignal()) if forwarded else socket.poll()
    waiting = asyncio.ensure_future(poll)
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(eio_exceptions.QueueEmpty):
        await asyncio.wait_for(waiting, T)
    await socket.queue.put(msg("kept"))
    assert [p.data for p in await asyncio.wait_for(socket.poll(), T)] == ["kept"]


async def test_a_forwarded_poll_parks_no_task_and_leaves_no_cancel_behind() -> None:
    """The former guard parked two tasks per forwarded poll; this one waits on the caller's
    task. A timeout is taken back: the caller's task is not left half-cancelled (an enclosing
    ``asyncio.timeout`` or TaskGroup would misread it)."""
    socket = make_socket(ping_interval=0.05, ping_timeout=0.05)
    before = len(asyncio.all_tasks())
    waiting = asyncio.ensure_future(orphanable_poll(socket, EndSignal()))
    await asyncio.sleep(0.01)
    assert len(asyncio.all_tasks()) == before + 1  # the poll's own task, nothing more
    await socket.queue.put(msg("x"))
    assert [p.data for p in await asyncio.wait_for(waiting, T)] == ["x"]

    async def timed_out() -> int:
        with pytest.raises(eio_exceptions.QueueEmpty):
            await orphanable_poll(socket, EndSignal())
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling() if hasattr(task, "cancelling") else 0

    assert await asyncio.wait_for(timed_out(), T) == 0
