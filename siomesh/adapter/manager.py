"""MeshManager: python-socketio's client manager, relaying across nodes over the mesh.

It keeps python-socketio's own bookkeeping (rooms, sids, callbacks) for the clients of this
node, exactly as :class:`socketio.AsyncManager` does, and sends what concerns other nodes as
``ADAPTER`` frames on the node's data link to each peer (:mod:`siomesh.links`): ordered,
pipelined, acknowledged, resent after a link breaks, deduplicated by the receiver, bounded, and
never lost in silence (see :mod:`siomesh.adapter.channel`). Request/response calls
(``server_side_emit`` with acks, ``fetch_sockets``, ``all_rooms``) are ``CALL`` frames on the
control link, one per peer, in parallel, under one timeout; a call is sent once and never
retried, and frames cannot be replayed, so a handler never runs twice for one call.

Routing, per message:

* to a sid: only to its owner, read from the owner tag inside the sid (no lookup);
* to a room: to the members that may hold it (``cluster.room_owners`` when the cluster view
  has a room directory, else every live peer);
* to everybody: to every live peer.

A peer that would have got a message but is not a live member now (declared dead, or a seed
that gossip never heard from) is *absent*: the message is not queued for it, but it takes a
sequence number in that peer's channel, folded into a gap (:meth:`PeerChannel.skip`). If the
peer comes back as the same process (a frozen node resumes, a partition heals), that gap reaches
it before anything sent later, and its clients that may have missed something are disconnected
to resync: never a silent hole.

This module is the sending half and python-socketio's manager interface. The receiving half
(peers' messages applied in order, one handler per message kind; the answers to calls) is
:mod:`siomesh.adapter.inbound`; the causal gate that emits wait at is
:mod:`siomesh.adapter.gate`; the per-peer channels are :mod:`siomesh.adapter.channel`; this
node's own half of each operation (python-socketio's bookkeeping) is :mod:`siomesh.adapter.local`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, overload

import socketio

from ..counters import Stats
from ..links.calls import CallFailed
from ..links.frames import FrameType
from ..links.link import Link, LinkClosed
from ..links.pool import LinkUnavailable
from ..ratelimit import RateLimitedLog
from ..sid import node_tag, parse_sid
from .channel import Emission, LinkSettings, PeerChannel, Targets
from .gate import CausalGate, GateEntry
from .inbound import Inbound
from .local import (
    RemoteSocket,
    Room,
    is_local,
    local_disconnect,
    local_emit,
    local_join,
    local_leave,
    local_rooms,
    local_sockets,
)
from .wire import DedupWindow, WireError, encode_message, pack, unpack

if TYPE_CHECKING:
    from ..recovery import Recovery
    from ..seams import NodeContext

__all__ = [
    "MeshManager",
    "PartialResult",
    "RemoteSocket",
    "install_adapter",
]

log = logging.getLogger("siomesh.adapter")

#: The operation of the adapter's cluster-wide calls over links (siomesh.links.calls).
ADAPTER_CALL = "adapter"

TICK = 0.5  # how often channels retry sending and notice dead peers, seconds
#: Default of ``order_timeout``: the most an emit waits for its peers (emit-completion and
#: causal order, see docs/adapter.md): ``adapter.order_timeout`` in the node's configuration.
ORDER_TIMEOUT = 0.25

ServerEventHandler = Callable[..., Any]
_H = TypeVar("_H", bound=ServerEventHandler)


class PartialResult(TimeoutError):
    """A cluster-wide call did not hear from every node in time (or a node failed).

    ``responses`` holds what did arrive (same shape as the call's normal return value);
    ``missing`` lists the URLs of the peers that did not answer.
    """

    def __init__(self, responses: Any, missing: list[str]) -> None:
        super().__init__(f"timeout reached: missing {len(missing)} responses")
        self.responses = responses
        self.missing = missing


def _as_args(data: Any) -> list[Any]:
    """python-socketio's emit convention: a tuple is several arguments, None is none."""
    if isinstance(data, tuple):
        return list(data)
    if data is None:
        return []
    return [data]


async def _logged_local_emit(
    manager: MeshManager,
    recovery: Recovery,
    offset: str,
    event: str,
    args: list[Any],
    namespace: str,
    room: Room | None,
    skip_sid: Any,
) -> None:
    """This node's half of an emit with a recovery offset: log it, then deliver it (both in
    the delivery's turn, so the log's order is the order this node's clients get events)."""
    recovery.note_emit(offset, event, args, namespace, room, skip_sid)
    await local_emit(manager, event, tuple(args), namespace, room, skip_sid, None)


def _rooms_list(rooms: Room | Iterable[Room]) -> list[Room]:
    if isinstance(rooms, (str, bytes, int)):
        return [rooms]
    return list(rooms)


class MeshManager(socketio.AsyncManager):  # type: ignore[misc]
    """A :class:`socketio.AsyncManager` whose emits, room changes and disconnects reach the
    clients of every node in the mesh. Install with :func:`install_adapter` (``SioMesh`` does
    it by default); do not share one instance between servers."""

    name = "siomesh"

    def __init__(
        self,
        mesh: NodeContext,
        *,
        settings: LinkSettings | None = None,
        flush_timeout: float = 1.0,
        order_timeout: float = ORDER_TIMEOUT,
    ) -> None:
        super().__init__()
        if order_timeout < 0:
            raise ValueError("order_timeout must be >= 0")
        self.mesh = mesh
        self.node_url: str = mesh.config.node_url
        self.epoch: int = mesh.generation
        self.settings = settings or LinkSettings()
        self.flush_timeout = flush_timeout
        #: the most an emit waits for its peers to apply it (0: never waits), seconds
        self.order_timeout = order_timeout
        self.running = False
        self._channels: dict[str, PeerChannel] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._server_handlers: dict[tuple[str, str], ServerEventHandler] = {}
        self._warn = RateLimitedLog(log)
        dedup = DedupWindow()
        #: emits made after applying a peer's message wait here for it (causal order)
        self._gate = CausalGate(applied=dedup.watermark, live=self._live_set, on_late=self._late)
        #: the receiving half: peers' messages and calls, one handler per kind
        self._inbound = Inbound(
            self,
            base=super(),
            dedup=dedup,
            channels=self._channels,
            gate=self._gate,
            server_handlers=self._server_handlers,
            return_callback=self._return_callback,
            warn=self._warn,
        )
        self._tags: dict[str, str] = {}  # peer URL -> node tag (absent peers' sids)
        #: the adapter's counters (``adapter`` in siomesh.counters)
        self.stats = Stats("adapter")

    # -- lifecycle -------------------------------------------------------------------------------

    def initialize(self) -> None:
        # python-socketio calls this on the first client; the links start at mesh startup
        # instead (``start``), so messages from peers flow before any local client exists.
        super().initialize()

    async def start(self) -> None:
        """Start the per-peer senders (a mesh startup hook; idempotent)."""
        if self.running:
            return
        self.running = True
        server = self.server
        if server is not None and not server.manager_initialized:
            server.manager_initialized = True
            self.initialize()
        self._ticker = asyncio.ensure_future(self._tick())
        log.info("siomesh adapter started on %s", self.node_url)

    async def stop(self) -> None:
        """Flush the queues for at most ``flush_timeout`` s, drop the rest (a shutdown hook)."""
        if not self.running:
            return
        self.running = False
        deadline = asyncio.get_running_loop().time() + self.flush_timeout
        while True:
            live = self._live_set()  # a peer that is not live cannot acknowledge: no wait
            # peers' messages acknowledged on receipt are applied too, within the same bound
            if self._inbound.idle and all(
                c.idle or p not in live for p, c in self._channels.items()
            ):
                break
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.02)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        unapplied = self._inbound.turns.received - self._inbound.turns.applied
        self._inbound.stop()
        if unapplied:
            log.warning(
                "siomesh adapter stopped with %d peer messages received but not applied "
                "within adapter flush_timeout (%.1f s)",
                unapplied,
                self.flush_timeout,
            )
        dropped = sum(len(c) for c in self._channels.values())
        if dropped:
            log.warning(
                "siomesh adapter stopped with %d messages not acknowledged by peers", dropped
            )

    async def _tick(self) -> None:
        """Retry what a full link refused, and fold a dead peer's queue into a gap."""
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            live = self._live_set()
            for peer, channel in list(self._channels.items()):
                if channel.idle:
                    continue
                if peer in live:
                    channel.check_stalled(now)
                    channel.pump()
                else:
                    channel.abandon("peer is no longer a live member")

    # -- routing ---------------------------------------------------------------------------------

    def _view(self) -> tuple[list[str], list[str]]:
        """``(live, absent)``: the peers messages are sent to, and those that are not live
        members now but may be the same process when they are again (declared dead, a seed
        gossip never heard from, or a peer this node has a channel to and that did not leave),
        for which messages are skipped into a gap. See ``GossipCluster.adapter_peers``."""
        cluster = self.mesh.cluster
        view = getattr(cluster, "adapter_peers", None)
        if view is not None:
            live, absent = view(self._channels)
            return list(live), list(absent)
        live = list(cluster.live_peers())
        up = set(live)
        return live, [p for p in self._channels if p not in up and p != self.node_url]

    def _live_set(self) -> set[str]:
        return set(self._view()[0])

    def _sid_node(self, sid: Any, absent: list[str]) -> str | None:
        """URL of the node whose tag ``sid`` carries, live or not (this node's own URL
        included); ``None`` when ``sid`` is not a sid of this cluster; ``""`` when no such
        member is known."""
        if not isinstance(sid, str):
            return None
        parts = parse_sid(self.mesh.keys, sid)
        if parts is None:
            return None
        cluster = self.mesh.cluster
        if parts.node_tag == cluster.self_tag:
            return self.node_url
        member = cluster.member_by_tag(parts.node_tag)
        if member is not None:
            url: str = member.url
            return url
        for peer in absent:  # a member gossip has forgotten, still absent for the adapter
            tag = self._tags.get(peer)
            if tag is None:
                tag = self._tags[peer] = node_tag(self.mesh.keys, peer)
            if tag == parts.node_tag:
                return peer
        return ""

    def sid_owner(self, sid: Any) -> str | None:
        """URL of the node holding ``sid`` (this node's own URL included); ``None`` when
        ``sid`` is not a sid of this cluster; ``""`` when its owner is not a live member."""
        live, absent = self._view()
        owner = self._sid_node(sid, absent)
        if owner is None or owner == self.node_url:
            return owner
        return owner if owner in live else ""

    def _route(self, namespace: str, room: Room | list[Room] | None) -> tuple[list[str], list[str]]:
        """``(peers, skipped)``: the live peers that may hold a recipient of ``room`` (None:
        everybody), and the absent peers that may (their channels record the message as
        missed, :meth:`PeerChannel.skip`)."""
        live, absent = self._view()
        if room is None:
            return live, absent
        rooms = room if isinstance(room, (list, tuple)) else [room]
        owners_of = getattr(self.mesh.cluster, "room_owners", None)
        targets: set[str] = set()
        everybody = False
        any_room = False
        for name in rooms:
            owner = self._sid_node(name, absent)
            if owner is not None:
                if owner and owner != self.node_url:
                    targets.add(owner)
                continue
            # an absent peer's rooms are not in the directory (a dead origin's entries go)
            any_room = True
            owners = owners_of(namespace, name) if owners_of is not None else None
            if owners is None:
                everybody = True
            else:
                targets.update(owners)
        peers = live if everybody else [peer for peer in live if peer in targets]
        skipped = absent if any_room else [peer for peer in absent if peer in targets]
        return peers, skipped

    def _peers_for(self, namespace: str, room: Room | list[Room] | None) -> list[str]:
        """The live peers that may hold a recipient of ``room`` (None: everybody)."""
        return self._route(namespace, room)[0]

    def _owner_route(self, sid: str) -> tuple[list[str], list[str]]:
        """``(peers, skipped)`` for a message to ``sid``'s owner when it is another node."""
        live, absent = self._view()
        owner = self._sid_node(sid, absent)
        if not owner or owner == self.node_url:
            return [], []
        if owner in live:
            return [owner], []
        return [], [owner] if owner in absent else []

    def _channel(self, peer: str) -> PeerChannel:
        channel = self._channels.get(peer)
        if channel is None:
            links = self.mesh.links
            channel = PeerChannel(
                peer,
                epoch=self.epoch,
                current_link=lambda url: links.current(url, "data"),
                dial=self._dial,
                settings=self.settings,
                warn=self._warn,
            )
            self._channels[peer] = channel
        return channel

    def _dial(self, peer: str) -> None:
        links = self.mesh.links
        if links.current(peer, "data") is None:
            links.ensure(peer, "data")

    def _link_up(self, link: Link) -> None:
        if link.kind == "data":
            channel = self._channels.get(link.peer)
            if channel is not None:
                channel.pump()

    def _send(
        self,
        peers: Iterable[str],
        message: dict[str, Any],
        skipped: Iterable[str] = (),
        emission: Emission | None = None,
    ) -> None:
        """Queue ``message`` for ``peers``; record it as missed by the ``skipped`` (absent).
        With an ``emission``, each peer's channel tracks it (see :meth:`_publish`)."""
        self._skip(skipped, message)
        text: str | None = None
        targets: Targets | None = None
        for peer in peers:
            if peer == self.node_url:
                continue
            if text is None:
                text = encode_message(message)
                targets = _targets_of(message)
            assert targets is not None
            self._channel(peer).enqueue(text, targets, emission)

    def _skip(self, peers: Iterable[str], message: dict[str, Any]) -> None:
        targets: Targets | None = None
        for peer in peers:
            if peer == self.node_url:
                continue
            if targets is None:
                targets = _targets_of(message)
                if not targets:
                    return
            self._channel(peer).skip(targets, "is not a live member")

    # -- emit-completion and causal order --------------------------------------------------------

    def _ordered(self) -> bool:
        """Whether the caller waits for order: the adapter runs, ``order_timeout`` > 0, and
        the caller is not the adapter's receive path (an emit made while a peer's message is
        applied, by a server-event handler or a disconnect handler, must not hold up that
        peer's later messages)."""
        if not self.running or self.order_timeout <= 0:
            return False
        return not self._inbound.is_consumer(asyncio.current_task())

    async def _publish(
        self,
        peers: Iterable[str],
        message: dict[str, Any],
        local: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        """Send ``message`` to ``peers`` and run ``local`` (this node's own half), then return
        once every peer it was sent to has received it (docs/adapter.md, "Delivery contract"):

        * causal order: if this node applied messages from a sender that are not yet received
          everywhere they went (the sender's stable watermark is behind), this message is not
          sent before they are (``local`` runs first, then the wait);
        * per-sender FIFO: emits that wait so are queued in call order (the gate), and an emit
          never overtakes one that waits;
        * emit-completion order: the return waits for each peer's acknowledgement, which it
          sends once the message is in its one apply queue (applied in arrival order, and
          ahead of that peer's own later emits: :mod:`siomesh.adapter.turns`); ``local``
          waits likewise for what this node received before the call.

        Concurrent calls wait concurrently (many messages in flight, one round trip in all).
        Each wait is bounded by ``order_timeout``: the causal one from the call, the
        acknowledgements' from the send (so a late send does not make a healthy peer look
        lagging). A peer that does not acknowledge in time is marked lagging and not waited for
        until it catches up; a sender that does not report its messages stable in time
        likewise, so a stalled node costs an emit 2 x ``order_timeout`` at most, once.
        """
        targets = [peer for peer in peers if peer != self.node_url]
        if not targets or not self._ordered():
            self._send(targets, message)
            if local is not None:
                await self._deliver_here(local)
            return
        deadline = asyncio.get_running_loop().time() + self.order_timeout
        entry = self._gate.join()
        if entry is None:  # nothing to wait for: send at once, deliver here meanwhile
            emission = Emission()
            try:
                self._send(targets, message, emission=emission)
                if local is not None:
                    await self._deliver_here(local)
                await self._wait_applied(emission, deadline)
            finally:
                self._finish(emission)
            return
        # this node's half first, then the rest in its turn, on a task of its own: if this
        # caller is cancelled meanwhile, the message still goes to the peers, in order
        try:
            if local is not None:
                await self._deliver_here(local)
        finally:
            rest = asyncio.ensure_future(self._send_in_turn(entry, targets, message, deadline))
            rest.add_done_callback(_log_failure)  # when nobody awaits it any more
        await asyncio.shield(rest)

    async def _deliver_here(self, local: Callable[[], Awaitable[Any]]) -> None:
        """Run ``local`` (this node's half): when order is kept, after every peer message this
        node received before the call (peers acknowledge on receipt, see
        :mod:`siomesh.adapter.turns`)."""
        if self._ordered():
            await self._inbound.in_turn(local, self.order_timeout)
        else:
            await local()

    async def _send_in_turn(
        self, entry: GateEntry, targets: list[str], message: dict[str, Any], deadline: float
    ) -> None:
        """Send ``message`` once ``entry`` is released from the gate, then wait until it is
        applied (the acknowledgements' bound counts from the send)."""
        emission: Emission | None = None
        try:
            try:
                await self._gate.wait(entry, deadline)
                emission = Emission()
                self._send(targets, message, emission=emission)
            finally:
                self._gate.leave(entry)
            await self._wait_applied(
                emission, asyncio.get_running_loop().time() + self.order_timeout
            )
        finally:
            if emission is not None:
                self._finish(emission)

    async def _wait_applied(self, emission: Emission, deadline: float) -> None:
        """Wait until every peer ``emission`` went to has received it, or until ``deadline``;
        then mark the peers that did not as lagging."""
        if emission.pending > 0:
            links = self.mesh.links
            for channel, seq in emission.entries:
                # a peer the last dial failed to reach cannot answer in time: no wait
                if (
                    channel.waits_for(seq)
                    and channel.peer in links.last_errors
                    and links.current(channel.peer, "data") is None
                ):
                    channel.lag("unreachable", self.order_timeout)
        if emission.pending <= 0:
            return
        loop = asyncio.get_running_loop()
        emission.waiter = waiter = loop.create_future()
        # a timer, not asyncio.wait: the acknowledgement wakes this task one loop turn sooner
        timer = loop.call_at(deadline, _resolve, waiter, False)
        try:
            applied = await waiter
        finally:
            timer.cancel()
        if not applied:
            now = time.monotonic()
            for channel, seq in emission.entries:
                if channel.waits_for(seq):
                    channel.timed_out(now, self.order_timeout)

    def _finish(self, emission: Emission) -> None:
        """The sender stopped waiting for ``emission``: its channels' stable watermarks may
        move, and the peers are told with the next acknowledgements."""
        emission.done = True
        for channel, _ in emission.entries:
            if channel.settle():
                self._inbound.stable_moved(channel)

    def _late(self, sender: str) -> None:
        """An emit stopped waiting for ``sender`` to report stable what this node applied."""
        self.stats.bump("causal_timeouts")
        self._warn.warning(
            ("causal", sender),
            "adapter: %s did not report within adapter.order_timeout (%.2f s) that the "
            "messages this node applied from it reached every node they went to: emits "
            "here stop waiting for that until it does (causal order is not guaranteed "
            "meanwhile)",
            sender,
            self.order_timeout,
        )

    @property
    def inbound_idle(self) -> bool:
        """Every peer message this node received is applied (for tests)."""
        return self._inbound.idle

    def queue_sizes(self) -> dict[str, int]:
        """Messages waiting for an acknowledgement, per peer (for metrics and tests)."""
        return {peer: len(channel) for peer, channel in self._channels.items()}

    def link_stats(self) -> dict[str, dict[str, int]]:
        """Each peer channel's counters (``adapter_peer`` in siomesh.counters), by peer."""
        return {peer: dict(channel.stats) for peer, channel in self._channels.items()}

    def channel_stats(self) -> list[Stats]:
        """Every peer channel's counters (status sums them)."""
        return [channel.stats for channel in self._channels.values()]

    # -- python-socketio's manager interface -----------------------------------------------------

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: Room | None = None,
        skip_sid: Any = None,
        callback: Callable[..., Any] | None = None,
        to: Room | None = None,
        **kwargs: Any,
    ) -> None:
        room = to or room
        namespace = namespace or "/"
        offset = None
        recovery = getattr(self.mesh, "recovery", None)
        if callback is None and recovery is not None and recovery.enabled:
            # connection state recovery: every event without an ack carries a cluster-wide
            # offset as its last argument, and every node logs it (siomesh.recovery)
            offset = recovery.new_offset()
            args = [*_as_args(data), offset]
            data = tuple(args)
            # Logged when this node delivers it, in its turn (after the peer messages it had
            # received): the log is replayed to recovering clients in its order, which must
            # be the order this node's clients got the events in.
            local = partial(
                _logged_local_emit, self, recovery, offset, event, args, namespace, room,
                skip_sid,
            )  # fmt: skip
        else:
            local = partial(local_emit, self, event, data, namespace, room, skip_sid, callback)
        if kwargs.get("ignore_queue"):
            await local()
            return
        peers, skipped = self._route(namespace, room)
        if skipped:
            self._skip(skipped, {"m": "emit", "ns": namespace, "room": room})
        peers = [peer for peer in peers if peer != self.node_url]
        if not peers:
            await self._deliver_here(local)
            return
        wire_callback = None
        if callback is not None:
            if room is None or isinstance(room, (list, tuple)):
                raise ValueError("Cannot use callback without a single room set.")
            ack_id = self._generate_ack_id(room, callback)
            wire_callback = [room, namespace, ack_id]
        message = {
            "m": "emit",
            "event": event,
            "args": pack(_as_args(data)),
            "ns": namespace,
            "room": room,
            "skip": skip_sid,
            "cb": wire_callback,
        }
        if offset is not None:
            message["off"] = offset
        if callback is not None and self._remote_owner(str(room)) is not None:
            await self._publish(peers, message)  # the only recipient is elsewhere
        else:
            await self._publish(peers, message, local)

    def _remote_owner(self, sid: str) -> str | None:
        owner = self.sid_owner(sid)
        return owner if owner and owner != self.node_url else None

    async def _to_owner(self, sid: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``sid``'s owner (or record it as missed, if it is absent) and
        wait until it is applied there (see :meth:`_publish`)."""
        peers, skipped = self._owner_route(sid)
        self._skip(skipped, message)
        await self._publish(peers, message)

    async def can_disconnect(self, sid: str, namespace: str) -> bool:
        namespace = namespace or "/"
        if is_local(self, sid, namespace):
            return bool(await super().can_disconnect(sid, namespace))
        await self._to_owner(sid, {"m": "disconnect", "sid": sid, "ns": namespace})
        return False

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        namespace = namespace or "/"
        if kwargs.get("ignore_queue"):
            await super().disconnect(sid, namespace, **kwargs)
            return
        if is_local(self, sid, namespace):
            await self.server.disconnect(sid, namespace=namespace, ignore_queue=True)
            return
        await self._to_owner(sid, {"m": "disconnect", "sid": sid, "ns": namespace})

    async def enter_room(
        self, sid: str, namespace: str, room: Room, eio_sid: str | None = None
    ) -> None:
        namespace = namespace or "/"
        if eio_sid is not None:  # python-socketio's own, as the client connects
            await super().enter_room(sid, namespace, room, eio_sid=eio_sid)
            return
        if is_local(self, sid, namespace):
            await self._deliver_here(partial(super().enter_room, sid, namespace, room))
            return
        await self._to_owner(sid, {"m": "enter_room", "sid": sid, "ns": namespace, "room": room})

    async def leave_room(self, sid: str, namespace: str, room: Room) -> None:
        namespace = namespace or "/"
        if is_local(self, sid, namespace):
            await self._deliver_here(partial(super().leave_room, sid, namespace, room))
            return
        await self._to_owner(sid, {"m": "leave_room", "sid": sid, "ns": namespace, "room": room})

    async def close_room(self, room: Room, namespace: str | None = None) -> None:
        namespace = namespace or "/"
        peers, skipped = self._route(namespace, room)
        message = {"m": "close_room", "ns": namespace, "room": room}
        self._skip(skipped, message)
        await self._publish(peers, message, partial(super().close_room, room, namespace))

    async def _return_callback(
        self, origin: str, sid: str, namespace: str, ack_id: int, *args: Any
    ) -> None:
        if origin == self.node_url:
            await self.trigger_callback(sid, ack_id, args)
            return
        await self._publish(
            [origin],
            {"m": "callback", "sid": sid, "ns": namespace, "id": ack_id, "args": pack(list(args))},
        )

    # -- cluster-wide operations (Node's adapter API, Pythonic names) ---------------------------

    @overload
    def on_server_event(
        self, event: str, handler: None = None, namespace: str = "/"
    ) -> Callable[[_H], _H]: ...

    @overload
    def on_server_event(self, event: str, handler: _H, namespace: str = "/") -> _H: ...

    def on_server_event(
        self,
        event: str,
        handler: ServerEventHandler | None = None,
        namespace: str = "/",
    ) -> Any:
        """Register ``handler(*args)`` for :meth:`server_side_emit` from other nodes; usable as a
        decorator (``@mgr.on_server_event("event")``). Its return value (may be a coroutine) is
        the node's response when the emitter asked for acks."""

        def register(func: _H) -> _H:
            self._server_handlers[(namespace, event)] = func
            return func

        if handler is None:
            return register
        return register(handler)

    async def server_side_emit(
        self,
        event: str,
        *args: Any,
        namespace: str = "/",
        timeout: float = 5.0,
        with_ack: bool = False,
    ) -> list[Any] | None:
        """Run the ``event`` handlers of the OTHER nodes with ``args``.

        Without acks it is fire-and-forget, ordered with this node's emits, and returns None.
        With ``with_ack=True`` it returns the list of the other nodes' responses (nodes without
        a handler for ``event`` do not respond) and raises :class:`PartialResult` when some node
        did not answer within ``timeout`` seconds.
        """
        peers = self._view()[0]
        if not with_ack:
            await self._publish(
                peers, {"m": "server_event", "event": event, "ns": namespace, "args": pack(args)}
            )
            return None
        replies, missing = await self._call(
            peers,
            {"op": "server_event", "event": event, "ns": namespace, "args": pack(args)},
            timeout,
        )
        responses = [unpack(r["result"]) for r in replies.values() if r.get("handled")]
        if missing:
            raise PartialResult(responses, missing)
        return responses

    async def fetch_sockets(
        self, namespace: str = "/", room: Room | list[Room] | None = None, timeout: float = 5.0
    ) -> list[RemoteSocket]:
        """Every client of ``namespace`` in the cluster (only ``room``'s members if given).
        Raises :class:`PartialResult` (``responses``: the sockets found) if a node is missing."""
        sockets = await local_sockets(self, namespace, room)
        replies, missing = await self._call(
            self._peers_for(namespace, room),
            {"op": "fetch_sockets", "ns": namespace, "room": room},
            timeout,
        )
        for peer, reply in replies.items():
            for item in reply.get("sockets", []):
                sockets.append(
                    RemoteSocket(
                        sid=item["sid"],
                        namespace=namespace,
                        rooms=tuple(item["rooms"]),
                        data=unpack(item["data"]),
                        owner=peer,
                        _manager=self,
                    )
                )
        if missing:
            raise PartialResult(sockets, missing)
        return sockets

    async def all_rooms(self, namespace: str = "/", timeout: float = 5.0) -> set[Room]:
        """The names of every non-empty room of ``namespace`` across the cluster (clients' own
        sid rooms excluded). Raises :class:`PartialResult` if a node is missing."""
        rooms = set(local_rooms(self, namespace))
        replies, missing = await self._call(
            self._view()[0], {"op": "all_rooms", "ns": namespace}, timeout
        )
        for reply in replies.values():
            rooms.update(reply.get("rooms", []))
        if missing:
            raise PartialResult(rooms, missing)
        return rooms

    async def sockets_join(
        self, rooms: Room | list[Room], namespace: str = "/", room: Room | None = None
    ) -> None:
        """Make every client of ``namespace`` (or of ``room``) join ``rooms``, on every node."""
        names = _rooms_list(rooms)
        peers, skipped = self._route(namespace, room)
        message = {"m": "sockets_join", "ns": namespace, "room": room, "rooms": names}
        self._skip(skipped, message)
        await self._publish(peers, message, partial(local_join, self, namespace, room, names))

    async def sockets_leave(
        self, rooms: Room | list[Room], namespace: str = "/", room: Room | None = None
    ) -> None:
        """Make every client of ``namespace`` (or of ``room``) leave ``rooms``, on every node."""
        names = _rooms_list(rooms)
        peers, skipped = self._route(namespace, room)
        message = {"m": "sockets_leave", "ns": namespace, "room": room, "rooms": names}
        self._skip(skipped, message)
        await self._publish(peers, message, partial(local_leave, self, namespace, room, names))

    async def disconnect_sockets(
        self, namespace: str = "/", room: Room | None = None, close: bool = False
    ) -> None:
        """Disconnect every client of ``namespace`` (or of ``room``) on every node; with
        ``close=True`` the whole Engine.IO connection is closed, not just the namespace."""
        peers, skipped = self._route(namespace, room)
        message = {"m": "disconnect_sockets", "ns": namespace, "room": room, "close": close}
        self._skip(skipped, message)
        await self._publish(peers, message, partial(local_disconnect, self, namespace, room, close))

    def server_count(self) -> int:
        """How many nodes are in the cluster: this one plus its live peers."""
        return 1 + len(self._view()[0])

    # -- request/response calls ------------------------------------------------------------------

    async def _call(
        self, peers: list[str], request: dict[str, Any], timeout: float
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Send ``request`` to every peer at once (one ``CALL`` frame each, on the control
        link, never retried); return (replies by peer, peers that did not answer in time)."""
        if not peers:
            return {}, []
        body = json.dumps(request, separators=(",", ":")).encode()
        tasks = {peer: asyncio.create_task(self._call_one(peer, body, timeout)) for peer in peers}
        done, pending = await asyncio.wait(tasks.values(), timeout=timeout)
        for task in pending:
            task.cancel()
        replies: dict[str, dict[str, Any]] = {}
        missing: list[str] = []
        for peer, task in tasks.items():
            if task not in done or task.cancelled():
                missing.append(peer)
                continue
            exc = task.exception()
            if exc is not None:
                if not isinstance(exc, (LinkUnavailable, LinkClosed, WireError)):
                    log.error("adapter call to %s failed", peer, exc_info=exc)
                missing.append(peer)
                continue
            try:
                reply = json.loads(task.result())
            except ValueError:
                missing.append(peer)
                continue
            if isinstance(reply, dict):
                replies[peer] = reply
            else:
                missing.append(peer)
        return replies, missing

    async def _call_one(self, peer: str, body: bytes, timeout: float) -> bytes:
        try:
            return await self.mesh.links.calls.call(peer, ADAPTER_CALL, body, timeout=timeout)
        except CallFailed as exc:
            raise WireError(str(exc)) from exc

    def attach(self) -> None:
        """Serve this manager's frames and calls on the node's links and run it with the
        node (called once, by :func:`install_adapter`)."""
        mesh = self.mesh
        dispatcher = mesh.links.dispatcher
        inbound = self._inbound
        dispatcher.on(FrameType.ADAPTER, partial(inbound.on_frame, FrameType.ADAPTER))
        dispatcher.on(FrameType.ADAPTER_GAP, partial(inbound.on_frame, FrameType.ADAPTER_GAP))
        dispatcher.on(FrameType.ADAPTER_ACK, inbound.on_ack)
        mesh.links.calls.serve(ADAPTER_CALL, inbound.serve_call)
        mesh.links.on_link_up(self._link_up)
        mesh.on_startup(self.start)
        mesh.on_shutdown(self.stop)


def install_adapter(mesh: NodeContext, **options: Any) -> MeshManager | None:
    """Install a :class:`MeshManager` on the mesh's Socket.IO server and return it.

    Only a server still using python-socketio's default in-memory ``socketio.AsyncManager`` is
    changed; a server configured with another manager (``AsyncRedisManager``, ...) keeps it
    (``None`` is returned) and the mesh still forwards its requests. ``options`` go to
    :class:`MeshManager`.
    """
    sio = mesh.server
    if sio is None:
        log.info("no python-socketio server: the siomesh adapter is not installed")
        return None
    current = sio.manager
    if type(current) is not socketio.AsyncManager:
        log.info(
            "server uses %s: keeping it, the siomesh adapter is not installed",
            type(current).__name__,
        )
        return None
    settings = mesh.config.adapter
    options.setdefault("settings", LinkSettings(max_queue=settings.max_queue))
    options.setdefault("flush_timeout", settings.flush_timeout)
    options.setdefault("order_timeout", _order_timeout(settings))
    manager = MeshManager(mesh, **options)
    mesh.seam.replace_manager(manager)  # carries over what the default manager holds
    manager.attach()
    return manager


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("adapter message could not be sent", exc_info=task.exception())


def _resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _order_timeout(settings: Any) -> float:
    """``adapter.order_timeout`` (``SIOMESH_ADAPTER_ORDER_TIMEOUT``) of the node's
    configuration, or :data:`ORDER_TIMEOUT` for a context without one (tests)."""
    value = getattr(settings, "order_timeout", None)
    return float(value) if value is not None else ORDER_TIMEOUT


def _targets_of(message: dict[str, Any]) -> Targets:
    """Which of the receiver's clients a message concerns (for a gap: who must resync)."""
    namespace = message.get("ns", "/")
    method = message.get("m")
    if method in ("callback", "server_event"):
        return {}
    if method in ("disconnect", "enter_room", "leave_room"):
        return {namespace: [message.get("sid")]}
    room = message.get("room")
    if room is None:
        return {namespace: None}
    return {namespace: list(room) if isinstance(room, (list, tuple)) else [room]}
