"""Ending an Engine.IO session so that its client *reconnects*.

``engineio.AsyncServer.disconnect(sid)`` sends the client a CLOSE packet; python-engineio's
client then reports a *server* disconnect, after which python-socketio's client does not
reconnect (by design: the server meant it). When siomesh has to end a session because the
client may have missed messages (an adapter gap, a poll answered into the void) or because the
node is draining, the client must come back at once, resync, and land elsewhere. So the session
is aborted the way a network failure would end it: no CLOSE packet; a pending poll is woken
with no packets and the next one gets ``400 Invalid session``; a WebSocket is closed without a
goodbye. Every Engine.IO client (python-socketio's, the JS client) treats that as a transport
error and reconnects with its usual back-off. The server still runs its ``disconnect`` handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from engineio import packet as eio_packet

__all__ = [
    "ENGINE_CLOSED",
    "PollRefusals",
    "awaits_ack",
    "count_acks_polled",
    "count_calls_in",
    "count_calls_out",
    "drop_session",
    "is_quiet",
    "is_safe_to_drop",
]

#: A session whose client sent nothing for this long has no rhythm to respect: drop it now.
IDLE = 1.0
#: How long a polling client being dropped has to poll again (and be refused) after its held
#: poll was answered; a client that does not is gone or frozen, and is dropped anyway.
REFUSAL_WAIT = 1.0
#: After a polling client was refused, how long its POSTs sent before it learnt are still
#: served (they cross the refusal on the wire). Below a reconnecting client's back-off
#: (python-socketio's and the JS client's first retry comes 0.5 to 1.5 s later) and below
#: recovery's wait for a session still open here (``recovery.HANDOFF_WAIT``).
LATE_POST_GRACE = 0.15
#: Set (True) on an ``engineio.async_socket.AsyncSocket`` whose client sent an Engine.IO CLOSE
#: (:meth:`PollRefusals.guard_close`): python-engineio ends it as "client disconnect", the
#: reason a Socket.IO goodbye gives too, while the Node server calls it "transport close" and
#: keeps it for recovery (the JS client sends it as it tears its engine down after a failed
#: poll). Read by :mod:`siomesh.recovery`.
ENGINE_CLOSED = "siomesh_engine_closed"


async def drop_session(eio: Any, sid: str) -> bool:
    """Abort Engine.IO session ``sid`` of server ``eio`` as described above; False if it was
    not open here. Runs on the server's event loop; does not wait for the client."""
    socket = eio.sockets.get(sid)
    if socket is None or socket.closed or socket.closing:
        return False
    await socket.close(wait=False, abort=True, reason=eio.reason.TRANSPORT_ERROR)
    # wake a pending long-poll (it answers no packets) or the WebSocket writer (it closes)
    with contextlib.suppress(Exception):
        socket.queue.put_nowait(None)
    eio.sockets.pop(sid, None)
    return True


class PollRefusals:
    """Polling sessions being dropped gracefully (:meth:`drop`): their client's next poll is
    refused with python-engineio's own ``400``, while POSTs it sent before it learnt are still
    served. Runs on the server's event loop; not thread-safe."""

    def __init__(self) -> None:
        #: sid -> set once the client learnt (its poll was refused) or is back elsewhere
        self._refusing: dict[str, asyncio.Event] = {}
        self._hurried: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._refusing)

    def __contains__(self, sid: object) -> bool:
        return sid in self._refusing

    def refused(self, sid: str) -> None:
        """The caller answered a poll (or an upgrade) of ``sid`` with a refusal."""
        event = self._refusing.get(sid)
        if event is not None:
            event.set()

    def guard_close(self, socket: Any, receive: Callable[[Any], Awaitable[Any]]) -> Any:
        """Packet-in hook (:mod:`siomesh.engine`): an Engine.IO CLOSE packet is noted on the
        session (:data:`ENGINE_CLOSED`: recovery keeps the session, as the Node server does).

        One from a client whose poll was refused is swallowed: the JS client, as it leaves
        after the refusal, POSTs one; served, it would end the session as a client
        disconnect at once, while the drop still serves the POSTs that crossed the refusal.
        The session is dropped as a transport error, as planned. (A client that really says
        goodbye in that second is dropped the same way: its app's ``disconnect`` handler sees
        "transport error", and recovery keeps the session until ``max_disconnection``, as for
        any client that vanished.)"""

        async def guarded_receive(pkt: Any) -> Any:
            if pkt.packet_type == eio_packet.CLOSE:
                if socket.sid in self._refusing:
                    self._refusing[socket.sid].set()  # the client learnt: it is leaving
                    return None
                setattr(socket, ENGINE_CLOSED, True)
            return await receive(pkt)

        return guarded_receive

    def hurry(self, sid: str) -> None:
        """``sid``'s client is back on another node (its recovery asks for the session): it
        learnt long ago, so drop the session now, with no grace."""
        if sid in self._refusing:
            self._hurried.add(sid)
            self._refusing[sid].set()

    async def drop(self, eio: Any, sid: str) -> bool:
        """Drop polling session ``sid`` so that nothing its client sent is lost.

        Aborting a polling session at once (:func:`drop_session`) loses any POST the client
        sent before it learnt: the POST gets ``400`` and python-engineio's client and the JS
        client do not send its packets again (a chat message said during a drain vanished).
        Here the held poll is answered with a NOOP; the client polls again at once and that
        poll is refused (``400``: the client reconnects, as from an aborted session) unless a
        call it sent meanwhile awaits its ack (that poll takes the ack); POSTs that crossed
        the refusal on the wire are served for :data:`LATE_POST_GRACE` more, and only then is
        the session aborted (at once if the client is already back elsewhere: :meth:`hurry`).
        Bounded by :data:`REFUSAL_WAIT` + :data:`LATE_POST_GRACE`. A WebSocket session is
        aborted at once (a WebSocket cannot be closed for writing and still read: uvicorn
        discards what arrives after its close)."""
        socket = eio.sockets.get(sid)
        if socket is None or socket.closed or socket.closing:
            return False
        if socket.upgraded or socket.upgrading:
            return await drop_session(eio, sid)
        refused = self._refusing[sid] = asyncio.Event()
        try:
            with contextlib.suppress(Exception):
                # the held poll answers with a NOOP (not with no packets: the JS client
                # reads an empty answer as a parser error and leaves without polling again)
                socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(refused.wait(), REFUSAL_WAIT)
            if sid not in self._hurried:
                await asyncio.sleep(LATE_POST_GRACE)
        finally:
            del self._refusing[sid]
            self._hurried.discard(sid)
        return await drop_session(eio, sid)


def _expects_ack(data: Any) -> bool:
    """Whether an Engine.IO message carries a Socket.IO EVENT (or BINARY_EVENT) with an ack
    id: ``2[/ns,]<id>[...]`` or ``5<n>-[/ns,]<id>[...]``."""
    if not isinstance(data, str) or not data or data[0] not in "25":
        return False
    i = 1
    if data[0] == "5":
        dash = data.find("-", 1)
        if dash < 0:
            return False
        i = dash + 1
    if data.startswith("/", i):
        comma = data.find(",", i)
        if comma < 0:
            return False
        i = comma + 1
    return i < len(data) and data[i].isdigit()


def _is_ack(data: Any) -> bool:
    return isinstance(data, str) and data[:1] in ("3", "6")


def _start_counting(socket: Any) -> None:
    if getattr(socket, "siomesh_calls", None) is None:
        socket.siomesh_calls = 0
        #: acks queued for the client that no poll has taken yet
        socket.siomesh_acks_queued = 0
        #: when the client's last packet arrived (monotonic), and the gap before it
        socket.siomesh_last_in = None
        socket.siomesh_gap = None


def count_calls_in(socket: Any, receive: Callable[[Any], Awaitable[Any]]) -> Any:
    """Packet-in hook (:mod:`siomesh.engine`): count, on an
    ``engineio.async_socket.AsyncSocket``, the client's calls (events sent with an ack id)
    whose ack has not been queued yet (``socket.siomesh_calls``), and note the client's rhythm.
    Draining drops a session only when it is quiet (:func:`is_quiet`), so that no call in
    flight loses its ack."""
    _start_counting(socket)

    async def counting_receive(pkt: Any) -> Any:
        now = time.monotonic()
        last = socket.siomesh_last_in
        socket.siomesh_gap = None if last is None else now - last
        socket.siomesh_last_in = now
        if pkt.packet_type == 4 and _expects_ack(pkt.data):  # 4: Engine.IO MESSAGE
            socket.siomesh_calls += 1
        return await receive(pkt)

    return counting_receive


def count_calls_out(socket: Any, send: Callable[[Any], Awaitable[Any]]) -> Any:
    """Packet-out hook: an ack queued for the client ends one of its calls."""
    _start_counting(socket)

    async def counting_send(pkt: Any) -> Any:
        if pkt.packet_type == 4 and _is_ack(pkt.data):
            socket.siomesh_acks_queued += 1
            if socket.siomesh_calls > 0:
                socket.siomesh_calls -= 1
        return await send(pkt)

    return counting_send


def count_acks_polled(socket: Any, poll: Callable[[], Awaitable[list[Any]]]) -> Any:
    """Poll hook: the acks a poll (or the WebSocket writer) takes for the client are no longer
    waiting (:func:`awaits_ack`)."""
    _start_counting(socket)

    async def counting_poll() -> list[Any]:
        packets = await poll()
        # Every poll and WebSocket write passes here: scan only when an ack is queued (every
        # queued ack was counted on its way in), so broadcasts pay one attribute read.
        if socket.siomesh_acks_queued:
            taken = sum(
                1 for p in packets if getattr(p, "packet_type", None) == 4 and _is_ack(p.data)
            )
            socket.siomesh_acks_queued = max(0, socket.siomesh_acks_queued - taken)
        return packets

    return counting_poll


def awaits_ack(socket: Any) -> bool:
    """A call of the client has no answer yet, or its answer waits to be polled."""
    return bool(getattr(socket, "siomesh_calls", 0) or getattr(socket, "siomesh_acks_queued", 0))


def is_quiet(socket: Any) -> bool:
    """No call of the client awaits its ack, and nothing is queued for the client."""
    queue = getattr(socket, "queue", None)
    return getattr(socket, "siomesh_calls", 0) == 0 and (queue is None or queue.empty())


def is_safe_to_drop(socket: Any, now: float) -> bool:
    """Whether ``now`` (``time.monotonic()``) is a good moment to drop the session: it is quiet
    (:func:`is_quiet`), and its client is unlikely to have a packet on the way.

    No server can know that a packet is on the way: python-socketio's client does not resend
    one that reached a session being dropped, so a call sent a millisecond before the drop is
    lost. The best moment is early in the client's rhythm, taking the gap between its last two
    packets as its beat: a client calling every 200 ms is dropped 50 to 100 ms after its last
    call, clear of that call's companions and at least half a beat before its next one (when
    the next one is due, wait for it and its ack). The close must reach the client before its
    next packet leaves, and a loaded server or client delays it: with the whole middle half of
    the beat allowed (up to 150 ms here), a sender emitting every 40 ms had one emit lost in
    about 15 rolling restarts, sent in the 10 ms left before it saw the close. A client silent
    for two beats, or for :data:`IDLE`, is dropped at once."""
    if not is_quiet(socket):
        return False
    last: float | None = getattr(socket, "siomesh_last_in", None)
    if last is None:
        return True
    since = now - last
    if since >= IDLE:
        return True
    gap: float | None = getattr(socket, "siomesh_gap", None)
    if gap is None:  # one packet so far (its CONNECT): no rhythm yet; its first call is due
        return False
    if since >= 2 * gap:  # it missed two beats: no rhythm after all
        return True
    # in the second quarter of the beat: past the last packet, half a beat from the next one
    return gap / 4 <= since <= gap / 2
