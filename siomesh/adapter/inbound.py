"""The adapter's receiving half: peers' messages applied in order, one handler per kind.

Frames arrive from the links' readers (:meth:`Inbound.on_frame`) and are acknowledged as soon
as they are queued: one queue for every sender, in the order they arrived, which one consumer
task applies one message at a time, skipping what was delivered already
(:class:`~siomesh.adapter.wire.DedupWindow`). This node's own emits deliver locally only after
every message it had received when they were made (:mod:`siomesh.adapter.turns`), so a
receipt is as good as an apply for emit-completion order (docs/adapter.md, "Delivery
contract"). The queue is bounded: past :data:`INBOX_FRAMES` frames or :data:`INBOX_BYTES`
bytes, acknowledgements wait for the consumer, so the senders' own bounded queues take the
back-pressure (and fold into gaps past theirs).
Each message is ``{"m": <kind>, "ns": <namespace>, ...}``; :data:`Inbound.handlers` maps a kind
to its ``_handle_<kind>``, as python-socketio's ``AsyncPubSubManager`` does. A handler does this
node's half of the operation only (python-socketio's in-memory manager, never relayed again).

Cluster-wide calls (``CALL`` frames, :mod:`siomesh.links.calls`) are answered likewise:
``{"op": <operation>, "ns": ..., ...}`` goes to ``_call_<operation>``, whose reply is a JSON
object.

A malformed message or call raises :class:`~siomesh.codec.WireError` (or a ``ValueError``,
``TypeError``, ``KeyError``) in its handler: it is counted (``adapter_bad_messages``), logged
(rate-limited) and skipped; the sender's later messages still apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from ..links.calls import CallRefused
from ..links.frames import FrameType, decode_u64_pair, encode_u64_pair
from ..links.link import Link
from ..ratelimit import RateLimitedLog
from ..sessions import drop_session
from .gate import CausalGate
from .local import (
    is_local,
    local_disconnect,
    local_emit,
    local_join,
    local_leave,
    local_rooms,
    local_sockets,
)
from .turns import Turns
from .wire import DedupWindow, WireError, pack, unpack

if TYPE_CHECKING:
    from .channel import PeerChannel
    from .manager import MeshManager

__all__ = ["Inbound"]

log = logging.getLogger("siomesh.adapter")

Message = dict[str, Any]
#: ``handler(message, namespace, sender)``: apply one peer's message here
MessageHandler = Callable[[Message, str, str], Awaitable[None]]
#: ``handler(request, namespace)``: this node's reply to a cluster-wide call
CallHandler = Callable[[Message, str], Awaitable[Message]]
_Frame = tuple[Link, FrameType, int, int, bytes]

#: what a malformed message or call raises in its handler
_BAD = (WireError, ValueError, TypeError, KeyError, RecursionError)

#: Frames the apply queue holds before acknowledgements wait for the consumer.
INBOX_FRAMES = 4096
#: Bytes of payload the apply queue holds before acknowledgements wait for the consumer.
INBOX_BYTES = 16 * 1024 * 1024


def _require(msg: Message, key: str, kind: type | tuple[type, ...]) -> Any:
    value = msg.get(key)
    if not isinstance(value, kind):
        raise WireError(f"message field {key!r} is missing or malformed")
    return value


class Inbound:
    """Applies the messages and answers the calls that peers send to ``manager``.

    ``base`` is python-socketio's own manager behaviour for this node's clients (the
    manager's base class, bound to it: ``super()`` inside :class:`MeshManager`); handlers use
    it so that nothing they do is relayed again. ``dedup`` remembers what was applied (its
    watermark per sender is the last message applied from it, which ``gate`` reads);
    ``channels`` are the manager's per-peer senders (acknowledgements go to them);
    ``server_handlers`` the ``server_side_emit`` handlers by (namespace, event);
    ``return_callback(sender, sid, namespace, ack_id, *args)`` sends a client's ack back.
    """

    def __init__(
        self,
        manager: MeshManager,
        *,
        base: Any,
        dedup: DedupWindow,
        channels: Mapping[str, PeerChannel],
        gate: CausalGate,
        server_handlers: Mapping[tuple[str, str], Callable[..., Any]],
        return_callback: Callable[..., Awaitable[None]],
        warn: RateLimitedLog,
    ) -> None:
        self._manager = manager
        self._base = base
        self.dedup = dedup
        self._channels = channels
        self._gate = gate
        self._server_handlers = server_handlers
        self._return_callback = return_callback
        self._warn = warn
        #: every peer's frames, in the order they arrived, until applied
        self._inbox: deque[_Frame] = deque()
        self._inbox_bytes = 0
        self._consumer: asyncio.Task[None] | None = None
        #: this node's own deliveries, waiting for what was received before them
        self.turns = Turns()
        self._acks: dict[Link, tuple[int, int]] = {}
        #: receipts not acknowledged yet because the queue is over its bound
        self._held_acks: dict[Link, tuple[int, int]] = {}
        self._acks_scheduled = False
        #: channels whose stable watermark moved since the peer was told (flushed with acks)
        self._stable_dirty: set[PeerChannel] = set()
        #: message kind -> handler
        self.handlers: dict[str, MessageHandler] = {
            "emit": self._handle_emit,
            "callback": self._handle_callback,
            "disconnect": self._handle_disconnect,
            "enter_room": self._handle_enter_room,
            "leave_room": self._handle_leave_room,
            "close_room": self._handle_close_room,
            "sockets_join": self._handle_sockets_join,
            "sockets_leave": self._handle_sockets_leave,
            "disconnect_sockets": self._handle_disconnect_sockets,
            "server_event": self._handle_server_event,
        }
        #: call operation -> handler
        self.calls: dict[str, CallHandler] = {
            "server_event": self._call_server_event,
            "fetch_sockets": self._call_fetch_sockets,
            "all_rooms": self._call_all_rooms,
        }

    # -- frames ----------------------------------------------------------------------------------

    def on_frame(self, kind: FrameType, link: Link, payload: bytes) -> None:
        """An ``ADAPTER`` or ``ADAPTER_GAP`` frame: queue it behind everything received before
        (from any sender) and acknowledge it, unless the queue is over its bound."""
        epoch, seq, rest = decode_u64_pair(payload)
        self._inbox.append((link, kind, epoch, seq, rest))
        self._inbox_bytes += len(rest)
        self.turns.received += 1
        if self._roomy():
            self._ack(link, epoch, seq)
        else:
            self._held_acks[link] = (epoch, seq)
        consumer = self._consumer
        if consumer is None or consumer.done():
            self._consumer = asyncio.ensure_future(self._consume())

    def _roomy(self) -> bool:
        return len(self._inbox) <= INBOX_FRAMES and self._inbox_bytes <= INBOX_BYTES

    @property
    def idle(self) -> bool:
        """Nothing received is waiting to be applied."""
        return self.turns.applied >= self.turns.received

    def on_ack(self, link: Link, payload: bytes) -> None:
        """An acknowledgement of this node's messages (epoch, seq), optionally followed by the
        peer's stable watermark for its own messages to this node (epoch, seq); epoch 0
        acknowledges nothing (a stable notice alone)."""
        epoch, seq, rest = decode_u64_pair(payload)
        if epoch:
            channel = self._channels.get(link.peer)
            if channel is not None:
                channel.on_ack(epoch, seq)
        if len(rest) >= 16:
            stable_epoch, stable, _ = decode_u64_pair(rest)
            self._gate.note_stable(link.peer, stable_epoch, stable)

    def is_consumer(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether ``task`` is applying a peer's messages (an emit it makes must not wait for
        order: that would hold up every later message)."""
        return task is not None and task is self._consumer

    def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
        self.turns.flush()

    async def in_turn(self, local: Callable[[], Awaitable[Any]], timeout: float) -> None:
        """Run ``local`` (this node's half of an emit or room change) once every peer message
        received before this call is applied, or after ``timeout`` seconds at most (counted,
        and a WARNING says order is not kept)."""
        turns = self.turns
        turn = turns.join()
        if turn is None:
            await local()
            return
        try:
            if not await turns.wait(turn, timeout):
                self._manager.stats.bump("turn_timeouts")
                self._warn.warning(
                    ("turn",),
                    "adapter: peers' messages received here were not applied within "
                    "adapter.order_timeout (%.2f s); an emit of this node was delivered here "
                    "ahead of them (a handler run for a peer's message is slow: see "
                    "docs/adapter.md, Delivery contract)",
                    timeout,
                )
            await local()
        finally:
            turns.leave(turn)

    async def _consume(self) -> None:
        stats = self._manager.stats
        inbox = self._inbox
        try:
            while inbox:
                link, kind, epoch, seq, rest = inbox.popleft()
                self._inbox_bytes -= len(rest)
                sender = link.peer
                try:
                    if not self.dedup.accept(sender, epoch, seq):
                        stats.bump("duplicates")
                    elif kind is FrameType.ADAPTER_GAP:
                        await self.apply_gap(sender, rest)
                    else:
                        stats.bump("received")
                        await self._apply(sender, rest)
                finally:
                    self.turns.advance()
                if self._held_acks and self._roomy():
                    self._acks.update(self._held_acks)
                    self._held_acks.clear()
                    self._schedule_flush()
                if inbox:
                    # a fan-out does not suspend: without this, a backlog of peer messages
                    # would hold the loop for all of them, and the clients' writers, pings
                    # and the links' readers would wait behind it (600 receivers: seconds)
                    await asyncio.sleep(0)
        finally:
            if not inbox:
                self.flush_acks()

    async def _apply(self, sender: str, text: bytes) -> None:
        stats = self._manager.stats
        try:
            message = json.loads(text)
            if not isinstance(message, dict) or not isinstance(message.get("m"), str):
                raise WireError("message without a method")
            await self.dispatch(message, sender)
        except _BAD as exc:
            stats.bump("bad_messages")
            self._warn.warning(("bad", sender), "bad adapter message from %s: %r", sender, exc)
        except Exception:
            log.exception("adapter message from %s failed", sender)

    # -- acknowledgements and stable watermarks --------------------------------------------------

    def _ack(self, link: Link, epoch: int, seq: int) -> None:
        # one cumulative ack per link per burst (or loop turn, in a long burst)
        self._acks[link] = (epoch, seq)
        self._schedule_flush()

    def stable_moved(self, channel: PeerChannel) -> None:
        """``channel``'s stable watermark moved: tell its peer with the next acks."""
        self._stable_dirty.add(channel)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._acks_scheduled:
            self._acks_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush_acks)

    def flush_acks(self) -> None:
        """Send the acknowledgements and stable watermarks gathered in this loop turn."""
        self._acks_scheduled = False
        if not self._acks and not self._stable_dirty:
            return
        acks, self._acks = self._acks, {}
        for link, (epoch, seq) in acks.items():
            link.send(FrameType.ADAPTER_ACK, 0, encode_u64_pair(epoch, seq))
        if self._stable_dirty:
            dirty, self._stable_dirty = self._stable_dirty, set()
            for channel in dirty:
                channel.notify_stable()

    # -- gaps ------------------------------------------------------------------------------------

    async def apply_gap(self, sender: str, detail: bytes) -> None:
        """``sender`` could not deliver some messages: disconnect (Engine.IO close, so they
        reconnect and resync) every local client they may have been for."""
        manager = self._manager
        stats = manager.stats
        stats.bump("gaps_received")
        try:
            info = json.loads(detail)
            targets = info["targets"]
            first = int(info["first"])
            if not isinstance(targets, dict):
                raise TypeError("targets")
        except (ValueError, KeyError, TypeError, RecursionError):
            stats.bump("bad_messages")
            return
        eio_sids: set[str] = set()
        for namespace, rooms in targets.items():
            if not isinstance(namespace, str):
                continue
            for room in [None] if rooms is None else rooms:
                with contextlib.suppress(TypeError):
                    for _, eio_sid in manager.get_participants(namespace, room):
                        eio_sids.add(eio_sid)
        stats.bump("resync_disconnects", len(eio_sids))
        log.warning(
            "adapter messages from %s were lost (from seq %d): disconnecting %d clients "
            "that may have missed them, so that they reconnect and resync",
            sender,
            first,
            len(eio_sids),
        )
        eio = manager.server.eio
        for eio_sid in eio_sids:
            socket = eio.sockets.get(eio_sid)
            if socket is not None:
                # the lost messages are in no log: recovering these sessions would hide the
                # gap, so they connect anew (siomesh.recovery)
                socket.siomesh_unrecoverable = True
            with contextlib.suppress(Exception):
                await drop_session(eio, eio_sid)

    # -- messages --------------------------------------------------------------------------------

    async def dispatch(self, msg: Message, sender: str) -> None:
        """Apply one message from ``sender`` (``msg["m"]`` is a str) with its handler."""
        method = msg["m"]
        namespace = _require(msg, "ns", str)
        handler = self.handlers.get(method)
        if handler is None:
            raise WireError(f"unknown method {method!r}")
        await handler(msg, namespace, sender)

    async def _handle_emit(self, msg: Message, namespace: str, sender: str) -> None:
        """An emit to this node's clients (of ``room``, but ``skip``); with ``cb``
        (``[sid, namespace, ack id]``), the client's ack goes back to ``sender``. An event
        with a recovery offset (``off``) is logged for connection state recovery."""
        cb = msg.get("cb")
        callback = None
        if cb is not None:
            if not (isinstance(cb, list) and len(cb) == 3 and isinstance(cb[2], int)):
                raise WireError("malformed callback")
            callback = partial(self._return_callback, sender, cb[0], cb[1], cb[2])
        args = unpack(_require(msg, "args", list))
        offset = msg.get("off")
        recovery = getattr(self._manager.mesh, "recovery", None)
        if isinstance(offset, str) and recovery is not None and recovery.enabled:
            recovery.note_emit(
                offset,
                _require(msg, "event", str),
                args,
                namespace,
                msg.get("room"),
                msg.get("skip"),
            )
        await local_emit(
            self._manager,
            _require(msg, "event", str),
            tuple(args),
            namespace,
            msg.get("room"),
            msg.get("skip"),
            callback,
        )

    async def _handle_callback(self, msg: Message, namespace: str, sender: str) -> None:
        """A client of ``sender`` acknowledged an emit made here: run its callback."""
        args = unpack(_require(msg, "args", list))
        await self._manager.trigger_callback(
            _require(msg, "sid", str), _require(msg, "id", int), args
        )

    async def _handle_disconnect(self, msg: Message, namespace: str, sender: str) -> None:
        """Disconnect ``sid`` from ``namespace`` if it is connected here."""
        sid = _require(msg, "sid", str)
        if self._manager.is_connected(sid, namespace):
            await self._manager.server.disconnect(sid, namespace=namespace, ignore_queue=True)

    async def _handle_enter_room(self, msg: Message, namespace: str, sender: str) -> None:
        """Put ``sid`` in ``room`` if it is this node's."""
        sid = _require(msg, "sid", str)
        if is_local(self._manager, sid, namespace):
            await self._base.enter_room(sid, namespace, msg.get("room"))

    async def _handle_leave_room(self, msg: Message, namespace: str, sender: str) -> None:
        """Take ``sid`` out of ``room`` if it is this node's."""
        sid = _require(msg, "sid", str)
        if is_local(self._manager, sid, namespace):
            await self._base.leave_room(sid, namespace, msg.get("room"))

    async def _handle_close_room(self, msg: Message, namespace: str, sender: str) -> None:
        """Empty ``room`` of this node's clients."""
        await self._base.close_room(msg.get("room"), namespace)

    async def _handle_sockets_join(self, msg: Message, namespace: str, sender: str) -> None:
        """This node's clients of ``room`` (all: None) join ``rooms``."""
        rooms = _require(msg, "rooms", list)
        await local_join(self._manager, namespace, msg.get("room"), rooms)

    async def _handle_sockets_leave(self, msg: Message, namespace: str, sender: str) -> None:
        """This node's clients of ``room`` (all: None) leave ``rooms``."""
        rooms = _require(msg, "rooms", list)
        await local_leave(self._manager, namespace, msg.get("room"), rooms)

    async def _handle_disconnect_sockets(self, msg: Message, namespace: str, sender: str) -> None:
        """Disconnect this node's clients of ``room`` (all: None); ``close``: their whole
        Engine.IO connection."""
        await local_disconnect(self._manager, namespace, msg.get("room"), bool(msg.get("close")))

    async def _handle_server_event(self, msg: Message, namespace: str, sender: str) -> None:
        """``server_side_emit`` without acks: run this node's handler, if any."""
        await self.run_server_event(
            namespace, _require(msg, "event", str), unpack(_require(msg, "args", list))
        )

    async def run_server_event(
        self, namespace: str, event: str, args: list[Any]
    ) -> tuple[bool, Any]:
        """Run the handler registered for ``event``: ``(handled, its result)``."""
        handler = self._server_handlers.get((namespace, event))
        if handler is None:
            return False, None
        result = handler(*args)
        if inspect.isawaitable(result):
            result = await result
        return True, result

    # -- calls -----------------------------------------------------------------------------------

    async def serve_call(self, link: Link, body: bytes) -> bytes:
        """The links' call handler: a malformed call is counted and refused."""
        try:
            return await self.handle_call(body, link.peer)
        except _BAD as exc:
            self._manager.stats.bump("bad_messages")
            raise CallRefused(f"bad call: {exc}") from exc

    async def handle_call(self, body: bytes, sender: str) -> bytes:
        """Answer a cluster-wide request from ``sender`` (a ``CALL`` frame's body)."""
        try:
            request = json.loads(body)
        except ValueError as exc:
            raise WireError("call is not JSON") from exc
        if not isinstance(request, dict):
            raise WireError("call is not an object")
        op = request.get("op")
        namespace = _require(request, "ns", str)
        handler = self.calls.get(op) if isinstance(op, str) else None
        if handler is None:
            raise WireError(f"unknown call {op!r}")
        reply = await handler(request, namespace)
        return json.dumps(reply, separators=(",", ":")).encode()

    async def _call_server_event(self, request: Message, namespace: str) -> Message:
        """``server_side_emit`` with acks: whether a handler ran, and what it returned."""
        handled, result = await self.run_server_event(
            namespace,
            _require(request, "event", str),
            unpack(_require(request, "args", list)),
        )
        return {"handled": handled, "result": pack(result)}

    async def _call_fetch_sockets(self, request: Message, namespace: str) -> Message:
        """This node's clients of ``room`` (all: None): sid, rooms and session data."""
        sockets = await local_sockets(self._manager, namespace, request.get("room"))
        return {
            "sockets": [
                {"sid": s.sid, "rooms": list(s.rooms), "data": pack(s.data)} for s in sockets
            ]
        }

    async def _call_all_rooms(self, request: Message, namespace: str) -> Message:
        """The names of this node's non-empty rooms (clients' own sid rooms excluded)."""
        return {"rooms": local_rooms(self._manager, namespace)}
