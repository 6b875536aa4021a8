"""Orphaned long-polls: a forwarded poll whose forwarder is gone must not take packets.

python-engineio lets two polls of one session wait at once, and the first waiter gets the next
packet. A poll forwarded by a node that then died (or whose client left) would take packets that
nobody will read, and the client's retried poll (a balancer retries an idempotent GET on another
node) would never see them: a lost ack, in silence. Cancelling the orphan is no better: python-
engineio closes the whole session on a cancelled poll and the client sees a *server* disconnect,
after which python-socketio's client does not reconnect.

So each session's ``poll`` is wrapped (:func:`guard_poll`, a hook of the engine seam's poll
stage, :mod:`siomesh.engine`). A forwarded request runs with :data:`ORPHANED` set to a signal
(:class:`~siomesh.links.link.EndSignal`) that fires when its link closes or its forwarder
cancels; the wrapped poll waits for the first packet *or* that signal, and on the signal
returns no packets, leaving the queue untouched and the session open.

Local requests (``ORPHANED`` unset) and the WebSocket writer run python-engineio's own poll
unchanged. A forwarded one waits in a replacement that keeps that poll's contract (the first
packet within ``ping_interval + ping_timeout``, else ``QueueEmpty``; a cancelled wait is
``QueueEmpty`` too; ``None`` ends the list and stays queued) and adds the signal. It waits on
the queue's own ``get()`` on the caller's task; a timer, or the signal, cancels that task and
the cancellation is taken back (``Task.uncancel``). ``Queue.get`` leaves an item in the queue
when its wait is cancelled, even one that had just been handed to it, so a packet that arrives
in the very loop turn the forwarder goes away stays for the client's next poll. (The former
guard raced the queue's getter, as a task, against the signal, and took such a packet: the
loss this module exists to prevent. It also cost two tasks and an ``asyncio.wait`` per
forwarded poll: about 11 against 8.4 µs of CPU per wait, ``benchmarks/poll_wait.py``.)

It also caps what one poll returns at :data:`MAX_POLL_PACKETS`, python-engineio's own client
limit (``Payload.max_decode_packets``): its server returns *every* queued packet in one poll,
and its client refuses a payload of more than 16 ("Unexpected packet from server") and drops the
connection. A burst is ordinary in a mesh (what a peer held for a frozen node, a recovery
replay, a takeover's queued packets), so the surplus stays with the session, in order, for the
next poll (or the WebSocket writer, which polls the same way).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from engineio import exceptions as eio_exceptions

from .links.link import EndSignal

__all__ = ["MAX_POLL_PACKETS", "ORPHANED", "guard_poll", "take_queued"]

#: The most packets one poll returns (python-engineio's client refuses a bigger payload).
MAX_POLL_PACKETS = 16

#: Set (to a signal that fires when the request is orphaned) while a forwarded request runs.
ORPHANED: contextvars.ContextVar[EndSignal | None] = contextvars.ContextVar(
    "siomesh_orphaned", default=None
)


def guard_poll(socket: Any, original: Callable[[], Awaitable[list[Any]]]) -> Any:
    """The poll of ``socket`` (an ``engineio.async_socket.AsyncSocket``), guarded as described
    above around ``original`` (python-engineio's own poll: this hook is innermost, see
    :data:`siomesh.engine.POLL_ORDER`), which a forwarded request's poll does not call."""
    overflow: deque[Any] = deque()
    socket.siomesh_overflow = overflow

    async def poll() -> list[Any]:
        orphaned = ORPHANED.get()
        if overflow:
            if orphaned is not None and orphaned.is_set():
                return []
            return [overflow.popleft() for _ in range(min(len(overflow), MAX_POLL_PACKETS))]
        packets = await _poll(orphaned)
        if len(packets) > MAX_POLL_PACKETS:
            overflow.extend(packets[MAX_POLL_PACKETS:])
            del packets[MAX_POLL_PACKETS:]
        return packets

    async def _poll(orphaned: EndSignal | None) -> list[Any]:
        if orphaned is None:
            result: list[Any] = await original()
            return result
        if orphaned.is_set():
            return []
        queue: asyncio.Queue[Any] = socket.queue
        if queue.empty():
            server = socket.server
            first = await _first_packet(queue, server.ping_interval + server.ping_timeout, orphaned)
            if first is _ORPHANED:
                return []
        else:
            first = queue.get_nowait()
        queue.task_done()
        if first is None:
            return []
        return [first, *_get_all(queue, keep_close=True)]

    return poll


#: What :func:`_first_packet` returns when the request was orphaned while it waited.
_ORPHANED = object()


async def _first_packet(queue: asyncio.Queue[Any], timeout: float, orphaned: EndSignal) -> Any:
    """``await queue.get()`` on the calling task, bounded by ``timeout`` (then python-engineio's
    ``QueueEmpty``) and by ``orphaned`` (then :data:`_ORPHANED`, nothing taken). A
    cancellation from elsewhere becomes ``QueueEmpty``, as in python-engineio's poll."""
    task = asyncio.current_task()
    assert task is not None
    why: list[str] = []

    def cut(reason: str) -> None:
        if not why:
            why.append(reason)
            task.cancel()

    def orphan() -> None:
        cut("orphaned")

    timer = asyncio.get_running_loop().call_later(timeout, cut, "timeout")
    orphaned.add_callback(orphan)
    try:
        return await queue.get()
    except asyncio.CancelledError:
        if why:
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+: take our cancel back
            if uncancel is not None:
                uncancel()
            if why[0] == "orphaned":
                return _ORPHANED
        raise eio_exceptions.QueueEmpty() from None
    finally:
        timer.cancel()
        orphaned.remove_callback(orphan)


def take_queued(socket: Any) -> list[Any]:
    """Remove and return every packet waiting for ``socket``'s client, in order (what a poll
    left over first, then the queue), ``None`` markers dropped. Does not await."""
    packets: list[Any] = []
    overflow: deque[Any] | None = getattr(socket, "siomesh_overflow", None)
    if overflow:
        packets.extend(overflow)
        overflow.clear()
    packets.extend(_get_all(socket.queue, keep_close=False))
    return packets


def _get_all(queue: asyncio.Queue[Any], *, keep_close: bool) -> list[Any]:
    """Every packet in ``queue`` now, in order. A ``None`` (python-engineio's "the session
    closes" marker) ends the list and, with ``keep_close``, is put back for the next reader
    (as python-engineio's poll does); without, it is dropped and reading goes on."""
    packets: list[Any] = []
    while True:
        try:
            pkt = queue.get_nowait()
        except asyncio.QueueEmpty:
            return packets
        queue.task_done()
        if pkt is None:
            if keep_close:
                queue.put_nowait(None)
                return packets
            continue
        packets.append(pkt)
