"""This node's half of the adapter's operations: python-socketio's in-memory bookkeeping of
this node's own clients, nothing relayed. The sending side (:mod:`siomesh.adapter.manager`)
runs it beside the message it sends; the receiving side (:mod:`siomesh.adapter.inbound`) runs
it for a peer's message. Every function takes the node's manager and uses only python-socketio's
public manager API.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from .wire import pack

if TYPE_CHECKING:
    from .manager import MeshManager

__all__ = [
    "RemoteSocket",
    "Room",
    "is_local",
    "local_disconnect",
    "local_emit",
    "local_join",
    "local_leave",
    "local_rooms",
    "local_sids",
    "local_sockets",
]

Room = Any  # python-socketio accepts any hashable room name; the wire carries str and int


@dataclass(frozen=True)
class RemoteSocket:
    """A Socket.IO client anywhere in the cluster, as :meth:`MeshManager.fetch_sockets` saw it.

    ``data`` is the client's python-socketio session for ``namespace`` when it is JSON-able
    (bytes allowed), else ``None``. ``owner`` is the URL of the node that holds the client.
    The methods act on the client wherever it is.
    """

    sid: str
    namespace: str
    rooms: tuple[Room, ...]
    data: Any
    owner: str
    _manager: MeshManager | None = field(default=None, repr=False, compare=False)

    def _mgr(self) -> MeshManager:
        if self._manager is None:
            raise RuntimeError("this RemoteSocket is not bound to a manager")
        return self._manager

    async def emit(self, event: str, data: Any = None) -> None:
        await self._mgr().emit(event, data, self.namespace, room=self.sid)

    async def join(self, room: Room) -> None:
        await self._mgr().enter_room(self.sid, self.namespace, room)

    async def leave(self, room: Room) -> None:
        await self._mgr().leave_room(self.sid, self.namespace, room)

    async def disconnect(self) -> None:
        await self._mgr().server.disconnect(self.sid, namespace=self.namespace)


def is_local(manager: MeshManager, sid: str, namespace: str) -> bool:
    """Whether ``sid`` is a client of this node in ``namespace`` (connecting ones included)."""
    return bool(manager.is_connected(sid, namespace) or manager.is_pre_connected(sid, namespace))


def local_sids(
    manager: MeshManager, namespace: str, room: Room | list[Room] | None
) -> list[tuple[str, str]]:
    """``(sid, eio_sid)`` of this node's connected clients of ``room`` (None: all)."""
    return [
        (sid, eio_sid)
        for sid, eio_sid in manager.get_participants(namespace, room)
        if manager.is_connected(sid, namespace)
    ]


async def local_emit(
    manager: MeshManager,
    event: str,
    data: Any,
    namespace: str,
    room: Room | list[Room] | None,
    skip_sid: Any,
    callback: Callable[..., Any] | None,
) -> None:
    """Deliver an emit to this node's clients of ``room`` (None: all), but ``skip_sid``: what
    python-socketio's ``AsyncManager.emit`` does, with the packet encoded once and sent to
    every recipient in order by :meth:`~siomesh.engine.EngineSeam.fan_out`, not a task per
    recipient. An emit with a ``callback`` (each recipient gets its own ack id) goes through
    python-socketio's own path. Returns once every recipient's packet is queued for its
    writer."""
    if callback is not None:
        await socketio.AsyncManager.emit(
            manager, event, data, namespace, room=room, skip_sid=skip_sid, callback=callback
        )
        return
    if namespace not in manager.rooms:
        return
    # python-socketio's convention: a tuple is several arguments, anything else one
    if isinstance(data, tuple):
        args = list(data)
    elif data is not None:
        args = [data]
    else:
        args = []
    skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
    # listed before the first send: a send may suspend (a timed-out session closes), and
    # the room may change meanwhile
    recipients = [
        eio_sid for sid, eio_sid in manager.get_participants(namespace, room) if sid not in skip
    ]
    if not recipients:
        return
    encoded = manager.server.packet_class(
        sio_packet.EVENT, namespace=namespace, data=[event, *args]
    ).encode()
    if not isinstance(encoded, list):
        encoded = [encoded]
    packets = [eio_packet.Packet(eio_packet.MESSAGE, part) for part in encoded]
    await manager.mesh.seam.fan_out(recipients, packets)


async def local_sockets(
    manager: MeshManager, namespace: str, room: Room | list[Room] | None
) -> list[RemoteSocket]:
    """This node's clients of ``room`` (None: all), as :meth:`MeshManager.fetch_sockets`
    reports them."""
    out = []
    for sid, _ in local_sids(manager, namespace, room):
        data: Any = None
        try:
            session = await manager.server.get_session(sid, namespace=namespace)
            json.dumps(pack(session))
            data = session
        except Exception:  # anything not JSON-able is reported as None
            data = None
        out.append(
            RemoteSocket(
                sid=sid,
                namespace=namespace,
                rooms=tuple(manager.get_rooms(sid, namespace)),
                data=data,
                owner=manager.node_url,
                _manager=manager,
            )
        )
    return out


def local_rooms(manager: MeshManager, namespace: str) -> list[Room]:
    """The names of this node's non-empty rooms (clients' own sid rooms excluded)."""
    return [
        name
        for name in manager.rooms.get(namespace, {})
        if name is not None and not manager.is_sid_room(namespace, name)
    ]


async def local_join(
    manager: MeshManager, namespace: str, room: Room | None, names: list[Room]
) -> None:
    """This node's clients of ``room`` (None: all) join ``names``."""
    for sid, _ in local_sids(manager, namespace, room):
        for name in names:
            with contextlib.suppress(ValueError):
                manager.basic_enter_room(sid, namespace, name)


async def local_leave(
    manager: MeshManager, namespace: str, room: Room | None, names: list[Room]
) -> None:
    """This node's clients of ``room`` (None: all) leave ``names``."""
    for sid, _ in local_sids(manager, namespace, room):
        for name in names:
            manager.basic_leave_room(sid, namespace, name)


async def local_disconnect(
    manager: MeshManager, namespace: str, room: Room | None, close: bool
) -> None:
    """Disconnect this node's clients of ``room`` (None: all); ``close``: their whole
    Engine.IO connection, not just the namespace."""
    for sid, eio_sid in local_sids(manager, namespace, room):
        if close:
            await manager.server.eio.disconnect(eio_sid)
        else:
            await manager.server.disconnect(sid, namespace=namespace, ignore_queue=True)
