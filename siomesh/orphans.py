"""Orphaned long-polls: a forwarded poll whose forwarder is gone must not take packets.

python-engineio lets two polls of one session wait at once, and the first waiter gets the next
packet. A poll forwarded by a node that then died (or whose client left) would take packets that
nobody will read, and the client's retried poll (a balancer retries an idempotent GET on another
node) would never see them: a lost ack, in silence. Cancelling the orphan is no better: python-
engineio closes the whole session on a cancelled poll and the client sees a *server* disconnect,
after which python-socketio's client does not reconnect.

So each session's ``poll`` is wrapped (:func:`guard_poll`, a hook of the engine seam's poll
stage, :mod:`siomesh.engine`). A forwarded request runs with :data:`ORPHANED` set to an event
that fires when its link closes or its forwarder cancels; the wrapped poll waits for the first
packet *or* that event, and on the event returns no packets, leaving the queue untouched and
the session open. Local requests (``ORPHANED`` unset) run python-engineio's own poll unchanged.

The wrapper mirrors ``engineio.async_socket.AsyncSocket.poll`` of python-engineio 4.x.

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

__all__ = ["MAX_POLL_PACKETS", "ORPHANED", "guard_poll", "take_queued"]

#: The most packets one poll returns (python-engineio's client refuses a bigger payload).
MAX_POLL_PACKETS = 16

#: Set (to an event that fires when the request is orphaned) while a forwarded request runs.
ORPHANED: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar(
    "siomesh_orphaned", default=None
)


def guard_poll(socket: Any, original: Callable[[], Awaitable[list[Any]]]) -> Any:
    """The poll of ``socket`` (an ``engineio.async_socket.AsyncSocket``), guarded as described
    above around ``original`` (a :class:`siomesh.engine.EngineSeam` poll hook)."""
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

    async def _poll(orphaned: asyncio.Event | None) -> list[Any]:
        if orphaned is None:
            result: list[Any] = await original()
            return result
        server = socket.server
        queue: asyncio.Queue[Any] = socket.queue
        getter = asyncio.ensure_future(queue.get())
        watcher = asyncio.ensure_future(orphaned.wait())
        try:
            await asyncio.wait(
                (getter, watcher),
                timeout=server.ping_interval + server.ping_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            watcher.cancel()
            if not getter.done():
                getter.cancel()  # nothing taken: the packet stays for the next poll
        if not getter.done() or getter.cancelled():
            if orphaned.is_set():
                return []
            raise eio_exceptions.QueueEmpty()
        packets = [getter.result()]
        queue.task_done()
        if packets == [None]:
            return []
        return packets + _get_all(queue, keep_close=True)

    return poll


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
