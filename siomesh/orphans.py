"""Orphaned long-polls: a forwarded poll whose forwarder is gone must not take packets.

python-engineio lets two polls of one session wait at once, and the first waiter gets the next
packet. A poll forwarded by a node that then died (or whose client left) would take packets that
nobody will read, and the client's retried poll (a balancer retries an idempotent GET on another
node) would never see them: a lost ack, in silence. Cancelling the orphan is no better: python-
engineio closes the whole session on a cancelled poll and the client sees a *server* disconnect,
after which python-socketio's client does not reconnect.

So each session's ``poll`` is wrapped (:func:`guard_poll`, installed when the session is
created). A forwarded request runs with :data:`ORPHANED` set to an event that fires when its
link closes or its forwarder cancels; the wrapped poll waits for the first packet *or* that
event, and on the event returns no packets, leaving the queue untouched and the session open.
Local requests (``ORPHANED`` unset) run python-engineio's own poll unchanged.

The wrapper mirrors ``engineio.async_socket.AsyncSocket.poll`` of python-engineio 4.x.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from engineio import exceptions as eio_exceptions

__all__ = ["ORPHANED", "guard_poll"]

#: Set (to an event that fires when the request is orphaned) while a forwarded request runs.
ORPHANED: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar(
    "siomesh_orphaned", default=None
)


def guard_poll(socket: Any) -> None:
    """Wrap ``socket.poll`` (an ``engineio.async_socket.AsyncSocket``) as described above."""
    original = socket.poll
    if getattr(original, "_siomesh_guarded", False):
        return

    async def poll() -> list[Any]:
        orphaned = ORPHANED.get()
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
        while True:
            try:
                pkt = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            queue.task_done()
            if pkt is None:
                queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets

    poll._siomesh_guarded = True  # type: ignore[attr-defined]
    socket.poll = poll
