"""The seam: the one module that touches python-engineio's and python-socketio's objects.

Every capability of siomesh that must see or change what the two libraries do (takeover,
recovery, orphaned polls, drain, gossip, the adapter) registers a hook here; none of them
assigns a library method or reads a private name itself (``tests/unit/test_engine_seam.py``
greps for it). Order is data, not a side effect of who wrapped what first.

The pipeline, per Engine.IO session (``engineio.async_socket.AsyncSocket``), composed once when
the session is created, outermost first::

    packet in  (socket.receive)   takeover.hold -> sessions.calls -> python-engineio
    packet out (socket.send)      sessions.calls -> [a temporary override] -> python-engineio
    poll       (socket.poll)      orphans.guard -> python-engineio
    added / removed               in registration order (gossip publishes, takeover tracks)

Why this order: the takeover hold is outermost, so packets it holds reach the call counter
(and the app) only when they are dispatched; the call counter sees every packet the app gets.

Per server: python-socketio's CONNECT packets out, CONNECT in and disconnects (recovery), rooms
entered and left on its client manager (gossip), the manager itself (the adapter); services
for a session that moves between nodes (translate a request, create a session, run the
``connect`` event).

Each hook is a *wrapper factory*: ``factory(socket, inner) -> replacement`` (or
``factory(inner) -> replacement`` for server hooks); the replacement calls ``inner`` to go on.

Private names this module depends on, and since which release (the floor is in
:mod:`siomesh.versions`): see :data:`PRIVATE_NAMES`. Everything runs on the server's event loop;
nothing here is thread-safe.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket
from engineio.exceptions import SocketIsClosedError

__all__ = [
    "PACKET_IN_ORDER",
    "PACKET_OUT_ORDER",
    "POLL_ORDER",
    "PRIVATE_NAMES",
    "EngineSeam",
    "TrackedSockets",
]

log = logging.getLogger("siomesh.engine")

#: Private names of the libraries used here: name -> (library, version it is known since).
PRIVATE_NAMES: dict[str, tuple[str, str]] = {
    "engineio.AsyncServer._async['translate_request']": ("python-engineio", "4.0"),
    "engineio.AsyncServer._trigger_event": ("python-engineio", "4.0"),
    "socketio.AsyncServer._send_packet": ("python-socketio", "5.0"),
    "socketio.AsyncServer._handle_connect": ("python-socketio", "5.0"),
    "socketio.AsyncServer._handle_disconnect(eio_sid, namespace, reason)": (
        "python-socketio",
        "5.12",
    ),
}

#: Known hooks of each session stage, outermost first (unknown names go innermost, in
#: registration order).
PACKET_IN_ORDER = ("takeover.hold", "sessions.calls", "sessions.refusals")
PACKET_OUT_ORDER = ("sessions.calls",)
POLL_ORDER = ("sessions.acks", "orphans.guard")

SocketWrapper = Callable[[Any, Callable[..., Any]], Callable[..., Any]]
ServerWrapper = Callable[[Callable[..., Any]], Callable[..., Any]]
SessionHook = Callable[[str, Any], None]
RemovedHook = Callable[[str], None]
RoomHook = Callable[[Any, str, str, Any], None]


class TrackedSockets(dict[str, Any]):
    """python-engineio's ``sockets`` dict, reporting sids added and removed.

    python-engineio only uses ``d[sid] = s``, ``del d[sid]``, ``in``, ``get`` and iteration on
    it, so overriding the two writers is enough; ``pop`` is covered for safety.
    """

    def __init__(
        self,
        initial: dict[str, Any],
        on_add: list[SessionHook],
        on_remove: list[RemovedHook],
    ) -> None:
        super().__init__(initial)
        self._on_add = on_add
        self._on_remove = on_remove
        for key, value in initial.items():
            for hook in on_add:
                hook(key, value)

    def __setitem__(self, key: str, value: Any) -> None:
        new = key not in self
        super().__setitem__(key, value)
        if new:
            for hook in self._on_add:
                hook(key, value)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        for hook in self._on_remove:
            hook(key)

    def pop(self, key: str, *default: Any) -> Any:
        present = key in self
        value = super().pop(key, *default)
        if present:
            for hook in self._on_remove:
                hook(key)
        return value


def _ordered(hooks: list[tuple[str, Any]], order: tuple[str, ...]) -> list[Any]:
    rank = {name: i for i, name in enumerate(order)}
    indexed = sorted(enumerate(hooks), key=lambda item: (rank.get(item[1][0], len(order)), item[0]))
    return [hook for _, (_, hook) in indexed]


class EngineSeam:
    """See the module docstring. ``eio`` is the python-engineio server, ``sio`` the
    python-socketio server around it (None for a bare Engine.IO app)."""

    def __init__(self, eio: Any, sio: Any) -> None:
        self.eio = eio
        self.sio = sio
        self._packet_in: list[tuple[str, SocketWrapper]] = []
        self._packet_out: list[tuple[str, SocketWrapper]] = []
        self._poll: list[tuple[str, SocketWrapper]] = []
        self._added: list[SessionHook] = []
        self._removed: list[RemovedHook] = []
        self._entered: list[RoomHook] = []
        self._left: list[RoomHook] = []
        self._rooms_hooked: Any = None
        self._composed: tuple[list[SocketWrapper], ...] | None = None
        #: python-engineio's sessions, tracked (see :class:`TrackedSockets`)
        self.sockets: TrackedSockets = TrackedSockets({}, [], [])
        self._installed = False

    # -- registration --------------------------------------------------------------------------

    def on_packet_in(self, name: str, factory: SocketWrapper) -> None:
        """Wrap every new session's ``receive(pkt)`` (see :data:`PACKET_IN_ORDER`)."""
        self._packet_in.append((name, factory))
        self._composed = None

    def on_packet_out(self, name: str, factory: SocketWrapper) -> None:
        """Wrap every new session's ``send(pkt)`` (see :data:`PACKET_OUT_ORDER`)."""
        self._packet_out.append((name, factory))
        self._composed = None

    def on_poll(self, name: str, factory: SocketWrapper) -> None:
        """Wrap every new session's ``poll()`` (see :data:`POLL_ORDER`)."""
        self._poll.append((name, factory))
        self._composed = None

    def on_session_added(self, hook: SessionHook) -> None:
        """Call ``hook(sid, socket)`` when a session is created (after its pipeline is set)."""
        self._added.append(hook)

    def on_session_removed(self, hook: RemovedHook) -> None:
        """Call ``hook(sid)`` when a session is gone from the server."""
        self._removed.append(hook)

    def on_rooms(self, entered: RoomHook, left: RoomHook) -> None:
        """Call ``entered(manager, sid, namespace, room)`` after a client entered a room, and
        ``left(...)`` after it left one, whatever client manager the server uses (hooked when
        the mesh starts, :meth:`hook_rooms`)."""
        self._entered.append(entered)
        self._left.append(left)

    def wrap_server(
        self,
        *,
        send_packet: ServerWrapper | None = None,
        handle_connect: ServerWrapper | None = None,
        handle_disconnect: ServerWrapper | None = None,
    ) -> None:
        """Wrap python-socketio's packet sender (``(eio_sid, pkt)``), its CONNECT handler
        (``(eio_sid, namespace, data)``) and its disconnect handler (``(eio_sid, namespace,
        reason)``). Each wrapper gets the current implementation and returns its replacement."""
        sio = self.sio
        if sio is None:
            raise RuntimeError("no python-socketio server to wrap")
        if send_packet is not None:
            sio._send_packet = send_packet(sio._send_packet)
        if handle_connect is not None:
            sio._handle_connect = handle_connect(sio._handle_connect)
        if handle_disconnect is not None:
            sio._handle_disconnect = handle_disconnect(sio._handle_disconnect)

    # -- installation ----------------------------------------------------------------------------

    def install(self, generate_id: Callable[[], str]) -> None:
        """Take over the server's session dict and sid generator (once, at construction:
        python-socketio takes its per-namespace sids from the same ``generate_id``)."""
        if self._installed:
            return
        self._installed = True
        self.eio.generate_id = generate_id
        self.sockets = TrackedSockets(self.eio.sockets, [self._session_added], self._removed)
        self.eio.sockets = self.sockets

    def _session_added(self, sid: str, socket: Any) -> None:
        if getattr(socket, "siomesh_piped", False):
            return
        socket.siomesh_piped = True
        if self._composed is None:
            self._composed = (
                _ordered(self._packet_in, PACKET_IN_ORDER),
                _ordered(self._packet_out, PACKET_OUT_ORDER),
                _ordered(self._poll, POLL_ORDER),
            )
        ins, outs, polls = self._composed
        for attr, factories in (("receive", ins), ("send", outs), ("poll", polls)):
            fn = getattr(socket, attr)
            for factory in reversed(factories):  # the first listed ends up outermost
                fn = factory(socket, fn)
            setattr(socket, attr, fn)
        for hook in self._added:
            hook(sid, socket)

    def override_send(
        self, socket: Any, factory: Callable[[Callable[..., Any]], Callable[..., Any]]
    ) -> Callable[[], None]:
        """Put ``factory(current send)`` in front of one session's ``send`` for a while;
        returns the function that removes it (e.g. recovery's gate while it replays)."""
        current = socket.send
        socket.send = factory(current)

        def restore() -> None:
            socket.send = current

        return restore

    def hook_rooms(self) -> None:
        """Apply the :meth:`on_rooms` hooks to the server's current client manager (at
        startup, after the adapter may have replaced it); idempotent per manager."""
        sio = self.sio
        if sio is None or not (self._entered or self._left):
            return
        manager = sio.manager
        if self._rooms_hooked is manager:
            return
        self._rooms_hooked = manager
        enter = manager.basic_enter_room
        leave = manager.basic_leave_room
        entered, left = list(self._entered), list(self._left)

        def basic_enter_room(sid: str, namespace: str, room: Any, eio_sid: Any = None) -> None:
            enter(sid, namespace, room, eio_sid=eio_sid)
            for hook in entered:
                hook(manager, sid, namespace, room)

        def basic_leave_room(sid: str, namespace: str, room: Any) -> None:
            present = sid in manager.rooms.get(namespace, {}).get(room, {})
            leave(sid, namespace, room)
            if present:
                for hook in left:
                    hook(manager, sid, namespace, room)

        manager.basic_enter_room = basic_enter_room
        manager.basic_leave_room = basic_leave_room

    def replace_manager(self, manager: Any) -> None:
        """Make ``manager`` the server's client manager, carrying over what the current one
        holds (clients connected before the mesh was built), so the swap is invisible."""
        sio = self.sio
        current = sio.manager
        manager.rooms = current.rooms
        manager.eio_to_sid = current.eio_to_sid
        manager.callbacks = current.callbacks
        # since python-socketio 5.18: a client is "pre-connected" until its connect handler
        # accepts it (``pending_connect``); older managers have no such state to carry over.
        if hasattr(current, "pending_connect"):
            manager.pending_connect = current.pending_connect
        manager.pending_disconnect = current.pending_disconnect
        _backport_manager_api(manager)
        manager.set_server(sio)
        sio.manager = manager

    # -- services for a session that moves between nodes ---------------------------------------

    async def translate_request(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> dict[str, Any]:
        """The WSGI-style environ python-engineio builds from an ASGI request."""
        environ: dict[str, Any] = await self.eio._async["translate_request"](scope, receive, send)
        return environ

    def new_session(self, sid: str, *, piped: bool = True) -> Any:
        """A connected Engine.IO session ``sid``, not yet registered (register it with
        ``seam.sockets[sid] = socket``). ``piped=False`` skips the packet pipeline's hooks
        that only concern sessions created by a handshake here (they are told by
        ``socket.siomesh_installed``)."""
        socket = AsyncSocket(self.eio, sid)
        socket.connected = True
        socket.siomesh_installed = not piped
        return socket

    def retire_session(self, socket: Any) -> None:
        """Stop a session that moves to another node, without a CLOSE to its client: a
        pending long-poll is answered with a NOOP (the client polls again, elsewhere), the ping
        task stops. Does not await. Then :meth:`forget_session`."""
        socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
        socket.closing = socket.closed = True

    def forget_session(self, sid: str) -> None:
        """Remove session ``sid`` from the servers (no disconnect event: it lives on
        elsewhere)."""
        self.eio.sockets.pop(sid, None)
        if self.sio is not None:
            self.sio.environ.pop(sid, None)

    async def run_connect(self, sid: str, environ: dict[str, Any]) -> None:
        """Run the server's Engine.IO ``connect`` event for ``sid`` (python-socketio stores the
        environ and waits for the client's CONNECT)."""
        await self.eio._trigger_event("connect", sid, environ, run_async=False)

    async def connect_with_sid(
        self, sid: str, handle_connect: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``handle_connect()`` (python-socketio's CONNECT handling) so that the Socket.IO
        sid it gives the client is ``sid`` (a recovered connection keeps its sid):
        python-socketio takes namespace sids from the Engine.IO server's ``generate_id``."""
        eio = self.eio
        generate = eio.generate_id
        used = False

        def once() -> str:
            nonlocal used
            if not used:
                used = True
                return sid
            result: str = generate()
            return result

        eio.generate_id = once
        try:
            await handle_connect()
        finally:
            eio.generate_id = generate

    async def fan_out(self, eio_sids: list[str], packets: list[Any]) -> int:
        """Send the Engine.IO ``packets``, in order, to each session of ``eio_sids``, in
        order, through each session's packet-out pipeline; returns how many sessions got them.

        No task per recipient (python-socketio's manager makes one per recipient and waits for
        them all): each ``send`` only queues the packet for the session's writer, so the loop
        runs straight through. It suspends only where python-engineio closes a session whose
        ping timed out, which runs that session's disconnect handler before the next
        recipient's packets. A session that is gone or closed is skipped, as python-engineio
        skips it (with no log line per recipient)."""
        sockets = self.eio.sockets
        sent = 0
        for eio_sid in eio_sids:
            socket = sockets.get(eio_sid)
            if socket is None or socket.closed:
                continue
            try:
                for pkt in packets:
                    await socket.send(pkt)
            except SocketIsClosedError:
                continue
            sent += 1
        return sent

    def environ(self, sid: str) -> dict[str, Any] | None:
        """The handshake environ python-socketio keeps for Engine.IO session ``sid``."""
        sio = self.sio
        environ = sio.environ.get(sid) if sio is not None else None
        return environ if isinstance(environ, dict) else None


def _backport_manager_api(manager: Any) -> None:
    """Give ``manager`` the python-socketio manager methods the adapter calls that its base
    class lacks on an older python-socketio (see ``siomesh.versions.SUPPORTED``)."""
    # since python-socketio 5.17: ``is_sid_room``; before it a sid room is told apart the
    # same way (a room named after a client of the namespace).
    if not hasattr(manager, "is_sid_room"):
        manager.is_sid_room = partial(_is_sid_room, manager)
    # since python-socketio 5.18: ``is_pre_connected``; before it a client is connected as
    # soon as it is registered (``is_connected``), so none is ever pre-connected.
    if not hasattr(manager, "is_pre_connected"):
        manager.is_pre_connected = partial(_never_pre_connected, manager)


def _is_sid_room(manager: Any, namespace: str, room: Any) -> bool:
    # python-socketio 5.17's BaseManager.is_sid_room
    return room in manager.rooms.get(namespace, {}).get(None, {})


def _never_pre_connected(manager: Any, sid: str, namespace: str) -> bool:
    return False
