"""Connection state recovery on any node (Socket.IO 4.6's protocol, served by python-socketio).

A client that loses its transport reconnects, through the balancer, to any node. With
``recovery.enabled``, that node restores the session the client had: the same Socket.IO sid,
its rooms and ``sio.session`` data, and every event emitted to it meanwhile, in order, exactly
once. The JS client then reports ``socket.recovered === true``.

The protocol, as socket.io-client 4.6+ speaks it:

* the CONNECT answer carries a private session id: ``{"sid": ..., "pid": ...}``;
* every event the server emits without an ack id carries an *offset*, a string appended as its
  last argument (the client keeps the last one it received);
* on reconnection the client's CONNECT carries ``{"pid": ..., "offset": ...}`` with its auth.

How siomesh serves it without a broker:

* **Offsets are cluster-wide.** The node where an emit starts names it (``<node tag><generation
  tag>.<n>``: unique across nodes and across restarts of one node);
  the adapter carries the name to every peer, so all nodes append the same offset and can
  compare logs by offset.
* **Every node logs** the events it delivers (and, with the default ``room_routing="all"``,
  every room and namespace event reaches every node), for ``max_disconnection`` seconds and at
  most ``max_log`` events.
* **A session that ends without a clean close** (transport error or close, ping timeout, or
  an Engine.IO CLOSE with no Socket.IO DISCONNECT before it: :data:`CLIENT_DISCONNECT`) is
  kept by its owner: pid, sid, namespace, rooms, session data, for ``max_disconnection``
  seconds (at most ``max_sessions``); the app's ``disconnect`` handler runs as usual.
* **The node the client comes back to** first checks the pid where it stands: a pid is a sid
  made by :func:`~siomesh.sid.make_sid`, so one whose MAC does not verify under the cluster
  secret (forged, random) is an ordinary new connection at once, with no call to any peer
  (``recovery_forged_pids``); so is an offset that is not shaped like one. A genuine pid names
  its *home*, the member that minted it (its node tag); the home keeps the session, or knows
  where it went (a pointer: the node a recovery handed it to, or the peer that adopted it on
  drain). The node asks the home, and only the home: **one call to one peer** (none when it is
  the home itself, or holds the session or a pointer to it). The home answers from its own
  keeping or forwards the call along its pointer (at most :data:`MAX_FORWARDS` calls), and
  records where the session goes. A home that is gone (drained, restarted under a new
  generation) is stood in for by its *successor*, the peer it handed its sessions and pointers
  to on drain, which every member computes the same way (rendezvous hashing over the members,
  :func:`successors`). The holder checks the offset (and the namespace) *before* it gives the
  session away: a wrong one leaves the session kept (``recovery_refused``). The holder gives
  the session, with the events after the client's offset, in the holder's order. The node
  restores the sid, the session data and the rooms, runs the app's
  ``connect`` handler with ``environ["siomesh.recovered"] = True``, answers CONNECT with the
  same pid, then sends the missed events, then the events it logged itself that the owner
  never saw (sent to the room while the two were apart), then live traffic, skipping any
  offset already sent. Nothing is lost or sent twice at the seams.
* **On drain** a node hands its kept sessions, its log and its pointers to its successor
  (``recovery.adopt``), so clients of a restarted node recover too. A call for a session
  being handed over waits for the hand-off (then follows it); a call for a session still
  connected here (its client came back before its old transport was seen to close) waits up
  to :data:`HANDOFF_WAIT` for it to be kept.
* A recovery that cannot happen (unknown or expired pid, the offset no longer logged, the
  holder gone) is an ordinary new connection, as in Node.

One :class:`Recovery` per node; everything runs on the node's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from engineio import packet as eio_packet
from socketio import packet as sio_packet

from .codec import WireError, pack, unpack
from .config import RecoveryConfig
from .counters import Stats
from .engine import EngineSeam
from .links.calls import CallFailed, CallRefused, Calls
from .links.link import Link, LinkClosed
from .links.pool import LinkPool, LinkUnavailable
from .sessions import ENGINE_CLOSED
from .sid import SidKeys, parse_sid

__all__ = ["ADOPT_CALL", "FETCH_CALL", "MAX_FORWARDS", "Recovery", "successors"]

log = logging.getLogger("siomesh.recovery")

FETCH_CALL = "recovery.fetch"
ADOPT_CALL = "recovery.adopt"

#: python-socketio disconnect reasons after which a session is kept for recovery
RECOVERABLE = frozenset({"transport error", "transport close", "ping timeout"})
#: the reason of a Socket.IO goodbye (not kept), and also of an Engine.IO CLOSE from the
#: client (kept when the session was marked :data:`~siomesh.sessions.ENGINE_CLOSED`: the
#: Node server calls that one "transport close")
CLIENT_DISCONNECT = "client disconnect"

#: how long after a restore live packets are checked against the offsets already sent
DEDUPE_SECONDS = 5.0
#: extra window (seconds) over which two nodes' logs are compared for events one never saw
SKEW = 5.0
#: how long a holder waits for a session whose pid is asked for while it is still connected
#: (its client came back before its old transport was seen to close) to be kept
HANDOFF_WAIT = 0.3
#: How long a recovery that found nothing waits for a draining peer's hand-off to this node
#: (the peer hands its sessions once it has dropped them, within ``drain_timeout / 2``).
ADOPTION_WAIT = 2.0
#: the most calls a home makes to find a session it no longer holds (its pointer, a drained
#: holder's adopter, a restarted holder's successor)
MAX_FORWARDS = 3
#: what a holder answers when it keeps the session but the offset or namespace is wrong: the
#: session stays kept (never a member URL)
REFUSED = "\x00refused"
#: an offset as :meth:`Recovery.new_offset` makes them: ``<tag>.<hex counter>``
_OFFSET = re.compile(r"[A-Za-z0-9_-]{1,64}\.[0-9a-f]{1,16}")


@dataclass
class Entry:
    """One logged event: what was emitted, to whom, and when (loop time)."""

    offset: str
    namespace: str
    room: Any  # None (the namespace), a room, or a list of rooms
    skip: tuple[Any, ...]
    event: str
    args: list[Any]  # the offset included, last
    at: float
    #: position in the log that holds it (set by Log.add)
    seq: int = 0

    def reaches(self, namespace: str, sid: str, rooms: frozenset[str]) -> bool:
        if namespace != self.namespace or sid in self.skip:
            return False
        room = self.room
        if room is None:
            return True
        if isinstance(room, (list, tuple)):
            return any(r == sid or r in rooms for r in room)
        return room == sid or room in rooms

    def to_wire(self) -> list[Any]:
        room = list(self.room) if isinstance(self.room, tuple) else self.room
        return [self.offset, self.namespace, room, list(self.skip), self.event, pack(self.args)]

    @classmethod
    def from_wire(cls, raw: Any, at: float) -> Entry:
        if not isinstance(raw, list) or len(raw) != 6:
            raise WireError("malformed log entry")
        offset, namespace, room, skip, event, args = raw
        if not all(isinstance(x, str) for x in (offset, namespace, event)):
            raise WireError("malformed log entry")
        if not isinstance(skip, list) or not isinstance(args, list):
            raise WireError("malformed log entry")
        return cls(offset, namespace, room, tuple(skip), event, unpack(args), at)


class Log:
    """Events in delivery order, by offset; bounded in age and count."""

    def __init__(self, max_entries: int, max_age: float) -> None:
        self.entries: deque[Entry] = deque()
        self.index: dict[str, Entry] = {}
        self.max_entries = max_entries
        self.max_age = max_age
        self.bytes = 0  # an estimate: the JSON size of the logged arguments
        self.last_seq = 0

    def add(self, entry: Entry) -> None:
        if entry.offset in self.index:
            return
        self.last_seq += 1
        entry.seq = self.last_seq
        self.entries.append(entry)
        self.index[entry.offset] = entry
        self.bytes += _size(entry)
        self.trim(entry.at)

    def trim(self, now: float) -> None:
        entries = self.entries
        while entries and (len(entries) > self.max_entries or now - entries[0].at > self.max_age):
            old = entries.popleft()
            self.index.pop(old.offset, None)
            self.bytes -= _size(old)

    def after(self, offset: str) -> list[Entry] | None:
        """Entries logged after ``offset``, in order; None when ``offset`` is not logged."""
        if offset not in self.index:
            return None
        out: list[Entry] = []
        found = False
        for entry in self.entries:
            if found:
                out.append(entry)
            elif entry.offset == offset:
                found = True
        return out

    def since(self, t: float) -> Iterable[Entry]:
        return (e for e in self.entries if e.at >= t)


def _size(entry: Entry) -> int:
    try:
        return len(json.dumps(pack(entry.args))) + 64
    except (TypeError, ValueError, WireError):
        return 256


@dataclass
class Kept:
    """A session kept for recovery."""

    pid: str
    sid: str
    namespace: str
    rooms: list[str]
    data: Any
    until: float
    #: what its client was sent, in the order it was sent: this node's own log, or (a
    #: restored, fetched or adopted session) a log of its own...
    log: Log
    #: ...continued by this node's own log after that position (a restored session: what
    #: was delivered live after the restore)...
    tail_seq: int | None = None
    #: ...or by what this node logged since that time and the log lacks (adopted or fetched:
    #: sent while the two nodes were apart)
    tail_time: float | None = None


class Recovery:
    """See the module docstring. ``sio`` is the node's python-socketio server; ``node_tag``
    prefixes offsets (it must differ between nodes and between starts of one node);
    ``make_pid`` makes self-routing private ids (the node's ``make_sid``: the first 8
    characters name this node and this process); ``owner_of(pid)`` names the member that
    minted a pid; ``live_peers()`` lists the other live members and
    ``leaving_peers()`` those that announced they leave (a draining node still answers).
    ``keys``: the cluster's sid keys, to verify pids; by default those of the object whose
    method ``make_pid`` is (the node), else a pid counts as genuine only when ``owner_of``
    names a member for it."""

    def __init__(
        self,
        config: RecoveryConfig,
        *,
        seam: EngineSeam,
        node_url: str,
        node_tag: str,
        links: LinkPool,
        make_pid: Callable[[], str],
        owner_of: Callable[[str], str | None],
        live_peers: Callable[[], list[str]],
        leaving_peers: Callable[[], list[str]],
        stats: Stats,
        call_timeout: float,
        keys: SidKeys | None = None,
        hurry_drop: Callable[[str], None] | None = None,
        handing_peers: Callable[[], list[str]] | None = None,
    ) -> None:
        self.config = config
        self.enabled = config.enabled and seam.sio is not None
        self._seam = seam
        self._sio = seam.sio
        self._url = node_url
        self._tag = node_tag
        self._links = links
        self._make_pid = make_pid
        self._owner_of = owner_of
        self._live_peers = live_peers
        self._leaving_peers = leaving_peers
        #: members that began to leave within a drain (default: every leaving member)
        self._handing_peers = handing_peers or leaving_peers
        self._timeout = call_timeout
        self.stats = stats
        #: told the Engine.IO sid of a session still open here whose client is back elsewhere
        #: (a drain may be holding it open for its late POSTs: siomesh.sessions.PollRefusals)
        self._hurry: Callable[[str], None] = hurry_drop or (lambda sid: None)
        if keys is None:
            found = getattr(getattr(make_pid, "__self__", None), "keys", None)
            keys = found if isinstance(found, SidKeys) else None
        self._keys = keys
        #: the first 8 characters of the pids this process makes (node tag, generation tag)
        self._minted: str | None = None
        self._counter = itertools.count(1)
        self.log = Log(config.max_log, config.max_disconnection + SKEW)
        #: pid per connected Socket.IO sid (namespace-qualified)
        self.pids: dict[tuple[str, str], str] = {}
        #: sessions kept for recovery, oldest first
        self.kept: OrderedDict[str, Kept] = OrderedDict()
        #: pointers, oldest first: pid -> the member its session went to (a recovery there, a
        #: hand-off on drain, or handed here with a drained home's own pointers); bounded
        self.adopters: OrderedDict[str, str] = OrderedDict()
        self.max_pointers = 2 * config.max_sessions
        #: sessions being handed to a peer right now (drain), and the end of that hand-off
        self._handing: dict[str, Kept] = {}
        self._handed: asyncio.Event | None = None
        #: set (and replaced) at each adoption of sessions handed here
        self._adoption = asyncio.Event()
        #: pid -> its connected session (the reverse of ``pids``)
        self._live: dict[str, tuple[str, str]] = {}
        #: restored sessions connected here: what the restore sent (a log of its own, the
        #: offsets the client had seen first) and this node's log position at the restore
        self.restored: dict[tuple[str, str], tuple[Log, int]] = {}
        self._loop_time: Callable[[], float] = lambda: asyncio.get_running_loop().time()
        if self.enabled:
            self._install()

    # -- offsets and the log -------------------------------------------------------------------

    def new_offset(self) -> str:
        return f"{self._tag}.{next(self._counter):x}"

    def note_emit(
        self, offset: str, event: str, args: list[Any], namespace: str, room: Any, skip: Any
    ) -> None:
        """Log one event delivered by this node (called by the adapter, for local and remote
        emits alike). ``args`` ends with ``offset``."""
        skips = _as_tuple(skip)
        if isinstance(room, list):
            room = tuple(room)
        self.log.add(Entry(offset, namespace, room, skips, event, args, self._loop_time()))

    # -- python-socketio hooks -----------------------------------------------------------------

    def _install(self) -> None:
        """Hook python-socketio through the engine seam (:mod:`siomesh.engine`): CONNECT
        packets out get the pid, CONNECT packets in may recover, disconnects keep the state."""
        self._seam.wrap_server(
            send_packet=self._wrap_send_packet,
            handle_connect=self._wrap_handle_connect,
            handle_disconnect=self._wrap_handle_disconnect,
        )

    def _wrap_send_packet(self, send_packet: Callable[..., Any]) -> Callable[..., Any]:
        async def _send_packet(eio_sid: str, pkt: Any) -> None:
            if (
                pkt.packet_type == sio_packet.CONNECT
                and isinstance(pkt.data, dict)
                and "sid" in pkt.data
            ):
                key = (pkt.namespace or "/", pkt.data["sid"])
                pid = self.pids.get(key)
                if pid is None:
                    pid = self._make_pid()
                    self._bind(key, pid)
                pkt.data = {**pkt.data, "pid": pid}
            await send_packet(eio_sid, pkt)

        return _send_packet

    def _wrap_handle_connect(self, handle_connect: Callable[..., Any]) -> Callable[..., Any]:
        async def _handle_connect(eio_sid: str, namespace: str, data: Any) -> None:
            namespace = namespace or "/"
            if (
                isinstance(data, dict)
                and isinstance(data.get("pid"), str)
                and isinstance(data.get("offset"), str)
            ):
                await self._recover(handle_connect, eio_sid, namespace, data)
                return
            await handle_connect(eio_sid, namespace, data)

        return _handle_connect

    def _wrap_handle_disconnect(self, handle_disconnect: Callable[..., Any]) -> Callable[..., Any]:
        async def _handle_disconnect(eio_sid: str, namespace: str, reason: Any = None) -> None:
            namespace = namespace or "/"
            with contextlib.suppress(Exception):
                self._keep(eio_sid, namespace, reason)
            await handle_disconnect(eio_sid, namespace, reason)

        return _handle_disconnect

    def _bind(self, key: tuple[str, str], pid: str) -> None:
        self.pids[key] = pid
        self._live[pid] = key

    def _unbind(self, key: tuple[str, str]) -> str | None:
        pid = self.pids.pop(key, None)
        if pid is not None and self._live.get(pid) == key:
            del self._live[pid]
        return pid

    def _keep(self, eio_sid: str, namespace: str, reason: Any) -> None:
        sio = self._sio
        manager = sio.manager
        sid = manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None:
            return
        pid = self._unbind((namespace, sid))
        restored = self.restored.pop((namespace, sid), None)
        if pid is None or not manager.is_connected(sid, namespace):
            return
        socket = sio.eio.sockets.get(eio_sid)
        if getattr(socket, "siomesh_unrecoverable", False):
            return
        if str(reason) not in RECOVERABLE and not (
            str(reason) == CLIENT_DISCONNECT and getattr(socket, ENGINE_CLOSED, False)
        ):
            return
        rooms = [r for r in manager.get_rooms(sid, namespace) if r != sid and isinstance(r, str)]
        data = socket.session.get(namespace) if socket is not None else None
        now = self._loop_time()
        self._prune(now)
        while len(self.kept) >= self.config.max_sessions:
            self.kept.popitem(last=False)
            self.stats.bump("recovery_expired")
        until = now + self.config.max_disconnection
        if restored is None:
            self.kept[pid] = Kept(pid, sid, namespace, rooms, data, until, self.log)
        else:
            prefix, seq = restored
            self.kept[pid] = Kept(pid, sid, namespace, rooms, data, until, prefix, tail_seq=seq)
        self.stats.bump("recovery_kept")

    def _prune(self, now: float) -> None:
        while self.kept:
            pid, kept = next(iter(self.kept.items()))
            if kept.until > now:
                break
            del self.kept[pid]
            self.stats.bump("recovery_expired")
        self.log.trim(now)

    # -- restoring -----------------------------------------------------------------------------

    async def _recover(
        self, handle_connect: Any, eio_sid: str, namespace: str, data: dict[str, Any]
    ) -> None:
        sio = self._sio
        socket = sio.eio.sockets.get(eio_sid)
        if socket is None:
            return
        pid, offset = str(data["pid"]), str(data["offset"])
        if not self.genuine(pid):
            # forged or random: no member kept it, and nobody is asked (attacker-driven: no
            # log line above DEBUG)
            self.stats.bump("recovery_forged_pids")
            log.debug("siomesh: recovery with a pid that does not verify: a new session")
            await handle_connect(eio_sid, namespace, data)
            return
        if not _OFFSET.fullmatch(offset):
            self.stats.bump("recovery_refused")
            self.stats.bump("recovery_misses")
            log.debug("siomesh: recovery of %s with a malformed offset: a new session", pid)
            await handle_connect(eio_sid, namespace, data)
            return
        # Live packets for this client wait until the missed ones are queued (see _restore).
        gate = _Gate(socket, self._seam)
        asked = self._loop_time()
        try:
            state = await self._fetch(pid, offset, namespace)
        except Exception as exc:  # a holder's bad answer: an ordinary connection
            log.warning("siomesh: recovery of %s failed: %r", pid, exc)
            state = None
        if eio_sid not in sio.environ or socket.closed:
            # the client left while its session was fetched: keep what was fetched for its
            # next attempt
            gate.open([])
            if state is not None:
                self._keep_fetched(str(data["pid"]), str(data["offset"]), state)
            return
        if state is None or state["namespace"] != namespace:
            self.stats.bump("recovery_misses")
            gate.open([])
            await handle_connect(eio_sid, namespace, data)
            return
        sid = str(state["sid"])
        socket.session[namespace] = state.get("data") or {}
        environ = sio.environ.get(eio_sid)
        if isinstance(environ, dict):
            environ["siomesh.recovered"] = True
        self._bind((namespace, sid), str(data["pid"]))
        await self._seam.connect_with_sid(sid, lambda: handle_connect(eio_sid, namespace, data))
        manager = sio.manager
        if not manager.is_connected(sid, namespace):
            gate.open([])  # the app refused the connection
            self._unbind((namespace, sid))
            return
        # From here to gate.open: no await, so nothing can slip between.
        rooms = [r for r in state["rooms"] if isinstance(r, str)]
        for room in rooms:
            manager.basic_enter_room(sid, namespace, room)
        missed: list[Entry] = list(state["missed"])
        seen = set(state["known"]) | {e.offset for e in missed}
        room_set = frozenset(rooms)
        # events this node logged that the holder's log lacks (sent while the two were apart)
        extras = [
            e
            for e in self.log.since(asked - SKEW)
            if e.offset not in seen and e.reaches(namespace, sid, room_set)
        ]
        packets: list[Any] = []
        for entry in [*missed, *extras]:
            encoded = sio.packet_class(
                sio_packet.EVENT, namespace=namespace, data=[entry.event, *entry.args]
            ).encode()
            for p in encoded if isinstance(encoded, list) else [encoded]:
                packets.append(eio_packet.Packet(eio_packet.MESSAGE, p))
        sent = seen | {e.offset for e in extras}
        self.restored[(namespace, sid)] = (
            self._prefix(str(data["offset"]), state["known"], [*missed, *extras]),
            self.log.last_seq,
        )
        gate.open(packets, sent)
        self.stats.bump("recovered")
        self.stats.bump("recovery_replayed", len(missed) + len(extras))

    def _keep_fetched(self, pid: str, offset: str, state: dict[str, Any]) -> None:
        """Keep a fetched session whose client left before it could be restored: its next
        attempt (from the same ``offset``) gets the same events, and nothing it saw."""
        now = self._loop_time()
        self.kept[pid] = Kept(
            pid, str(state["sid"]), str(state["namespace"]), list(state["rooms"]),
            state.get("data"), now + self.config.max_disconnection,
            self._prefix(offset, state["known"], state["missed"]), tail_time=now - SKEW,
        )  # fmt: skip

    def _prefix(self, offset: str, known: Iterable[str], sent: list[Entry]) -> Log:
        """A session's own log: placeholders (reaching nobody) for the offsets its client had
        seen, ending with ``offset``, then the events ``sent`` to it, in order."""
        now = self._loop_time()
        log = Log(self.config.max_log + len(sent) + 1, self.config.max_disconnection + SKEW)
        pending = {e.offset for e in sent}
        for seen in [*known, offset]:
            if seen not in pending:
                log.add(Entry(seen, "\x00", None, (), "", [], now))
        for entry in sent:
            log.add(Entry(*_fields(entry), at=now))
        return log

    # -- finding a kept session ----------------------------------------------------------------

    def genuine(self, pid: str) -> bool:
        """Whether ``pid`` can have been made by a member: its MAC verifies under the cluster's
        keys. Checked before anything else, with no I/O: a forged pid costs no call."""
        if self._keys is not None:
            return parse_sid(self._keys, pid) is not None
        return self._owner_of(pid) is not None

    def _minted_here(self, pid: str) -> bool:
        """Whether this process (not an earlier one under this URL) made ``pid``."""
        if self._minted is None:
            self._minted = self._make_pid()[:8]
        return pid[:8] == self._minted

    def _reachable(self) -> list[str]:
        """Members that answer calls: the live ones and those leaving (draining)."""
        return [*self._live_peers(), *self._leaving_peers()]

    def successor(self, url: str) -> str | None:
        """The member that stands in for ``url`` once it is gone: the first of
        :func:`successors` among the members that answer and this node; None if that is
        this node (or there is none)."""
        ranked = successors(url, [*self._reachable(), self._url])
        if not ranked or ranked[0] == self._url:
            return None
        return ranked[0]

    def _home_of(self, pid: str) -> str | None:
        """The one member to ask for genuine ``pid`` (not held here): the member that minted
        it, or its successor when it is gone; None when nobody else can hold it."""
        home = self._owner_of(pid)
        if home is None:
            return None
        if home == self._url:
            if self._minted_here(pid):
                return None  # this process minted it and holds nothing: nobody does
            return self.successor(home)  # an earlier process under this URL: its successor
        if home in self._reachable():
            return home
        return self.successor(home)

    def _point(self, pid: str, url: str) -> None:
        """Remember that ``pid``'s session went to ``url`` (bounded: the oldest goes)."""
        if url == self._url:
            self.adopters.pop(pid, None)
            return
        self.adopters[pid] = url
        self.adopters.move_to_end(pid)
        while len(self.adopters) > self.max_pointers:
            self.adopters.popitem(last=False)

    async def _fetch(self, pid: str, offset: str, namespace: str) -> dict[str, Any] | None:
        """The kept session ``pid`` and what its client missed after ``offset``, from
        wherever it is kept (:meth:`_find`); None when nobody can restore it. ``pid`` is
        genuine.

        When nobody had it but a draining peer is about to hand its sessions to this node,
        waits for that hand-off (at most :data:`ADOPTION_WAIT`) and takes the session if it
        came. The chain of pointers can miss a session on the move: a client whose session a
        draining node held (handed there by a node drained earlier, whose own process under
        the home's URL restarted meanwhile knowing nothing) reconnects here a moment before
        that node hands it to this one; the home's stand-in knows nothing of it, and the
        client came back unrecovered (about 1 run in 8 of the rolling-restart recovery
        test)."""
        state = await self._find(pid, offset, namespace)
        if state is not None or pid in self.kept or not self._handoff_expected():
            return state  # found, or kept here under another offset or namespace (refused)
        loop = asyncio.get_running_loop()
        until = loop.time() + ADOPTION_WAIT
        while pid not in self.kept and loop.time() < until:
            signal = self._adoption
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(signal.wait(), max(0.0, until - loop.time()))
            if not self._handoff_expected():
                break
        if pid not in self.kept:
            return None
        self.stats.bump("recovery_waited_handoffs")
        return self._taken_here(pid, offset, namespace)

    def _handoff_expected(self) -> bool:
        """Whether a peer that is draining may still hand its kept sessions here: it began to
        leave within a drain. Not only when this node is its first successor: a hand-off
        skips a successor that does not take it (one restarted a moment before)."""
        return bool(self._handing_peers())

    async def _find(self, pid: str, offset: str, namespace: str) -> dict[str, Any] | None:
        """The kept session ``pid``, from here, from where this node's pointer says, or from
        its home. At most one call to one peer, unless this node is the pid's home (or
        stands in for it) and follows its own pointer."""
        local = await self._take_here(pid, offset, namespace)
        if isinstance(local, dict):
            return local
        if local == REFUSED:
            return None
        if isinstance(local, str):
            # this node knows where the session went: ask there (and follow, bounded)
            state = await self._chase(pid, offset, namespace, local, {self._url})
            if not isinstance(state, dict):
                return None
            self.adopters.pop(pid, None)  # it is here now
            return state
        home = self._home_of(pid)
        if home is None:
            return None
        answer = await self._ask(home, pid, offset, namespace, forwarded=False)
        if answer == self._url:
            # the session was handed to this node while the home looked for it
            return self._taken_here(pid, offset, namespace)
        if isinstance(answer, str) and answer not in (REFUSED, self._url, home):
            # a peer of an earlier version points instead of forwarding: follow once
            answer = await self._ask(answer, pid, offset, namespace, forwarded=True)
        return answer if isinstance(answer, dict) else None

    def _taken_here(self, pid: str, offset: str, namespace: str | None) -> dict[str, Any] | None:
        """The session ``pid`` from what this node holds, when a peer says it is here."""
        state = self.take(pid, offset, namespace)
        return state if isinstance(state, dict) else None

    async def _take_here(
        self, pid: str, offset: str, namespace: str | None
    ) -> dict[str, Any] | str | None:
        """:meth:`take`, once ``pid``'s session, still connected here, is kept (at most
        :data:`HANDOFF_WAIT`), and once a hand-off of it in flight has ended.

        Both, in that order: on a draining node a session dropped during the first wait can
        be kept and handed to the successor at once; the answer is then the pointer to that
        peer, known only once the hand-off ended (taken at once, it was None, and the client
        reconnected unrecovered)."""
        if pid in self._live and pid not in self.kept and pid not in self._handing:
            namespace_of, sid_of_pid = self._live[pid]
            with contextlib.suppress(Exception):  # python-socketio's public manager API
                self._hurry(self._sio.manager.eio_sid_from_sid(sid_of_pid, namespace_of))
            loop = asyncio.get_running_loop()
            until = loop.time() + HANDOFF_WAIT
            while (
                pid in self._live
                and pid not in self.kept
                and pid not in self._handing
                and loop.time() < until
            ):
                await asyncio.sleep(0.01)
        if pid in self._handing and self._handed is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._handed.wait(), self._timeout)
        return self.take(pid, offset, namespace)

    async def _serve_home(
        self, pid: str, offset: str, namespace: str | None, requester: str
    ) -> dict[str, Any] | str | None:
        """A peer asks this node, ``pid``'s home (or its stand-in), for the session: give it,
        or fetch it along the pointer; then point to ``requester``. Never a pointer back, but
        to ``requester`` itself when the session was handed to it meanwhile (a draining home
        hands its sessions to its successor, which may be the node asking)."""
        local = await self._take_here(pid, offset, namespace)
        if isinstance(local, dict):
            self._point(pid, requester)
            return local
        if local == REFUSED:
            return local
        first = local
        if first is None:
            if self._owner_of(pid) != self._url or self._minted_here(pid):
                return None
            first = self.successor(self._url)  # an earlier process under this URL's
        state = await self._chase(
            pid, offset, namespace, first, {self._url, requester}, requester=requester
        )
        if isinstance(state, dict):
            self._point(pid, requester)
        return state

    async def _chase(
        self,
        pid: str,
        offset: str,
        namespace: str | None,
        target: str | None,
        visited: set[str],
        requester: str | None = None,
    ) -> dict[str, Any] | str | None:
        """Follow pointers from ``target`` (at most :data:`MAX_FORWARDS` calls, within one
        ``call_timeout``): a holder that is gone, or knows nothing of ``pid`` (it may have
        restarted), is stood in for by its successor, once.

        A draining holder hands its sessions to its successor, which can be the node asking:
        a pointer to this node takes the session from what it holds now; a pointer to
        ``requester`` (the peer this node asks for) is returned as is, for it to do the same."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout / 2
        stood_in = False
        for _ in range(MAX_FORWARDS):
            if target == self._url:
                return self._taken_here(pid, offset, namespace)
            if target is not None and target == requester:
                return target
            if target is None or target in visited:
                return None
            if target not in self._reachable():
                target = self.successor(target)
                if target is not None and target == requester:
                    return target
                if target is None or target in visited:
                    return None
            visited.add(target)
            answer = await self._ask(
                target, pid, offset, namespace, forwarded=True,
                timeout=max(0.05, deadline - loop.time()),
            )  # fmt: skip
            if isinstance(answer, dict):
                return answer
            if answer == REFUSED:
                return None
            if answer is None:
                if stood_in:
                    return None
                stood_in = True
                answer = self.successor(target)
            target = answer
        return None

    async def _ask(
        self,
        peer: str,
        pid: str,
        offset: str,
        namespace: str | None,
        *,
        forwarded: bool,
        timeout: float | None = None,
    ) -> dict[str, Any] | str | None:
        """Ask ``peer`` for ``pid``: the state, the member it went to, :data:`REFUSED`, or
        None. ``forwarded``: answer from what ``peer`` holds, without asking further."""
        request: dict[str, Any] = {"pid": pid, "offset": offset, "namespace": namespace}
        if forwarded:
            request["forwarded"] = True
        self.stats.bump("recovery_fetches_sent")
        try:
            payload = await self._links.calls.call(
                peer,
                FETCH_CALL,
                json.dumps(request).encode(),
                timeout=self._timeout if timeout is None else timeout,
            )
        except (LinkUnavailable, LinkClosed, asyncio.TimeoutError, CallFailed):
            return None
        answer = json.loads(payload)
        if not isinstance(answer, dict):
            return None
        if answer.get("refused"):
            return REFUSED
        if "adopter" in answer:
            return str(answer["adopter"])
        if "state" not in answer:
            return None
        raw = answer["state"]
        now = self._loop_time()
        raw["missed"] = [Entry.from_wire(e, now) for e in raw["missed"]]
        return dict(raw)

    def take(
        self, pid: str, offset: str, namespace: str | None = None
    ) -> dict[str, Any] | str | None:
        """Remove kept session ``pid`` and return its state with the events missed after
        ``offset`` (:class:`Entry` objects); the member it went to; or None. When the session
        is kept here but ``offset`` is not in its log (or ``namespace`` is not its own):
        :data:`REFUSED`, and the session stays kept: a wrong guess destroys nothing."""
        now = self._loop_time()
        self._prune(now)
        kept = self.kept.get(pid)
        if kept is None:
            return self.adopters.get(pid)
        if namespace is not None and namespace != kept.namespace:
            self.stats.bump("recovery_refused")
            log.debug("siomesh: recovery of %s in another namespace: refused", pid)
            return REFUSED
        entries = self._entries_of(kept)
        position = next((i for i, e in enumerate(entries) if e.offset == offset), None)
        if position is None:
            # not an offset this session's log holds (a guess, or older than the log):
            # refused; the session stays kept for a request with the right one
            self.stats.bump("recovery_refused")
            log.debug("siomesh: recovery of %s with an offset not in its log: refused", pid)
            return REFUSED
        del self.kept[pid]
        rooms = frozenset(kept.rooms)
        missed = [e for e in entries[position + 1 :] if e.reaches(kept.namespace, kept.sid, rooms)]
        # offsets the client saw recently, or will get from ``missed``: the restoring node
        # must not send them again from its own log
        known = [e.offset for e in entries if e.at >= now - 2 * SKEW or kept.log is not self.log]
        return {
            "sid": kept.sid,
            "namespace": kept.namespace,
            "rooms": kept.rooms,
            "data": kept.data,
            "missed": missed,
            "known": known,
        }

    def _entries_of(self, kept: Kept) -> list[Entry]:
        """What a kept session's client was sent, in order (see :class:`Kept`)."""
        entries = list(kept.log.entries)
        if kept.log is self.log:
            return entries
        index = kept.log.index
        if kept.tail_seq is not None:
            entries.extend(
                e for e in self.log.entries if e.seq > kept.tail_seq and e.offset not in index
            )
        elif kept.tail_time is not None:
            entries.extend(e for e in self.log.since(kept.tail_time) if e.offset not in index)
        return entries

    # -- serving peers -------------------------------------------------------------------------

    def serve_calls(self, calls: Calls) -> None:
        """Serve ``recovery.fetch`` and ``recovery.adopt`` calls from peers."""
        calls.serve(FETCH_CALL, self._serve_fetch_call)
        calls.serve(ADOPT_CALL, self._serve_adopt_call)

    async def _serve_fetch_call(self, link: Link, body: bytes) -> bytes:
        request = self._request(body)
        if not self.enabled:
            return b"{}"
        try:
            reply = await self._serve_fetch(request, link.peer)
        except (WireError, ValueError, TypeError, KeyError) as exc:
            raise CallRefused(f"bad recovery call: {exc}") from exc
        return json.dumps(reply).encode()

    async def _serve_adopt_call(self, link: Link, body: bytes) -> bytes:
        request = self._request(body)
        if not self.enabled:
            return b"{}"
        try:
            reply = self._adopt(request, link.peer)
        except (WireError, ValueError, TypeError, KeyError) as exc:
            raise CallRefused(f"bad recovery call: {exc}") from exc
        return json.dumps(reply).encode()

    @staticmethod
    def _request(body: bytes) -> dict[str, Any]:
        try:
            request = json.loads(body)
        except ValueError as exc:
            raise CallRefused("malformed recovery call") from exc
        if not isinstance(request, dict):
            raise CallRefused("malformed recovery call")
        return request

    async def _serve_fetch(self, request: dict[str, Any], peer: str) -> dict[str, Any]:
        pid, offset = request["pid"], request["offset"]
        namespace = request.get("namespace")
        if not isinstance(pid, str) or not isinstance(offset, str):
            raise WireError("pid and offset must be strings")
        if namespace is not None and not isinstance(namespace, str):
            raise WireError("namespace must be a string")
        if not self.genuine(pid):
            return {}
        if request.get("forwarded"):
            # a home (or its stand-in) asks: answer from what is here
            state = await self._take_here(pid, offset, namespace)
        else:
            state = await self._serve_home(pid, offset, namespace, peer)
        if state == REFUSED:
            return {"refused": True}
        if isinstance(state, str):
            return {"adopter": state}
        if state is None:
            return {}
        try:
            json.dumps(state["data"])
        except (TypeError, ValueError):
            log.warning("siomesh: session data of %s is not JSON: recovered without it", pid)
            state["data"] = None
        state = dict(state)
        state["missed"] = [e.to_wire() for e in state["missed"]]
        return {"state": state}

    def _adopt(self, request: dict[str, Any], origin: str) -> dict[str, Any]:
        now = self._loop_time()
        count = events = 0
        for group in request["groups"]:
            adopted = Log(self.config.max_log, self.config.max_disconnection + SKEW)
            for raw in group["log"]:
                adopted.add(Entry.from_wire(raw, now))
            events += len(adopted.entries)
            for raw in group["sessions"]:
                pid, sid, namespace, rooms, data, left = raw
                if not (isinstance(pid, str) and isinstance(sid, str) and isinstance(rooms, list)):
                    raise WireError("malformed session")
                self.kept[pid] = Kept(
                    pid, sid, str(namespace), [str(r) for r in rooms], data,
                    now + max(0.0, float(left)), adopted, tail_time=now - SKEW,
                )  # fmt: skip
                self.adopters.pop(pid, None)
                count += 1
        # wake recoveries waiting for a hand-off (_fetch)
        self._adoption.set()
        self._adoption = asyncio.Event()
        # the drained node's pointers: this node now answers for its pids
        pointers = request.get("pointers", [])
        if not isinstance(pointers, list):
            raise WireError("malformed pointers")
        for raw in pointers:
            if not (
                isinstance(raw, list) and len(raw) == 2 and all(isinstance(x, str) for x in raw)
            ):
                raise WireError("malformed pointer")
            pid, url = raw
            if pid not in self.kept and url != origin:
                self._point(pid, url)
        if count or events:
            log.warning(
                "siomesh: adopted %d sessions (and %d logged events) of %s for recovery",
                count,
                events,
                origin,
            )
        return {"adopted": count}

    async def hand_off(self, bound: float | None = None) -> int:
        """Give every kept session, the log and the pointers to a live peer (drain): the
        first of :func:`successors` of this node that accepts, all tries within ``bound``
        seconds (default: ``call_timeout`` per peer). The number of sessions handed. Calls for
        the sessions being handed meanwhile wait for the outcome. When no peer takes them,
        they stay kept here, and a WARNING and ``recovery_handoff_failed`` say so (if this
        node exits, their clients reconnect unrecovered)."""
        if not self.enabled or not (self.kept or self.adopters):
            return 0
        now = self._loop_time()
        self._prune(now)
        handing = dict(self.kept)
        self.kept.clear()
        self._handing.update(handing)
        done = self._handed = asyncio.Event()
        try:
            peer = await self._hand(handing, now, bound)
        finally:
            for pid in handing:
                self._handing.pop(pid, None)
            done.set()
        if peer is None:
            if handing:
                log.warning(
                    "siomesh: no peer adopted the %d sessions kept for recovery%s; if this "
                    "node stops, their clients reconnect as new sessions",
                    len(handing),
                    "" if bound is None else f" within {bound:.1f} s",
                )
                self.stats.bump("recovery_handoff_failed", len(handing))
            # still here: kept as before, oldest first (those kept meanwhile are newer)
            meanwhile = list(self.kept.items())
            self.kept.clear()
            self.kept.update(handing)
            self.kept.update(meanwhile)
            return 0
        for pid in handing:
            self._point(pid, peer)
        self.stats.bump("recovery_handed_off", len(handing))
        return len(handing)

    async def _hand(self, handing: dict[str, Kept], now: float, bound: float | None) -> str | None:
        """Send ``handing`` and the pointers to the first peer that takes them, within
        ``bound`` seconds in all; that peer."""
        loop = asyncio.get_running_loop()
        until = None if bound is None else loop.time() + bound
        # sessions grouped by the log their missed events come from: this node's own, or
        # one it adopted from a node drained earlier
        groups: dict[int, tuple[Kept, list[list[Any]]]] = {}
        for kept in handing.values():
            try:
                json.dumps(kept.data)
                data = kept.data
            except (TypeError, ValueError):
                data = None
            group = groups.setdefault(id(kept.log), (kept, []))
            group[1].append(
                [kept.pid, kept.sid, kept.namespace, kept.rooms, data, kept.until - now]
            )
        groups_wire = [
            {"log": [e.to_wire() for e in self._entries_of(first)], "sessions": sessions}
            for first, sessions in groups.values()
        ]
        for peer in successors(self._url, self._live_peers()):
            pointers = [[pid, url] for pid, url in self.adopters.items() if url != peer]
            body = json.dumps({"groups": groups_wire, "pointers": pointers}).encode()
            timeout = self._timeout
            if until is not None:
                timeout = min(timeout, until - loop.time())
                if timeout <= 0:
                    break
            try:
                await self._links.calls.call(peer, ADOPT_CALL, body, timeout=timeout)
            except (LinkUnavailable, LinkClosed, asyncio.TimeoutError, CallFailed):
                continue
            return peer
        return None

    def count_sizes(self) -> None:
        """Set the gauges of what recovery holds now (status and metrics read them)."""
        self.stats.set("recovery_sessions", len(self.kept))
        self.stats.set("recovery_log_events", len(self.log.entries))
        self.stats.set("recovery_log_bytes", self.log.bytes)


def successors(url: str, members: Iterable[str]) -> list[str]:
    """``members`` but ``url``, best first, to stand in for ``url`` (rendezvous hashing):
    every node ranks the same members the same way, and a member that goes changes nobody
    else's rank. A draining node hands its sessions to the first that accepts; a node that
    finds the member it would ask gone asks the first of the others."""
    return sorted(
        {m for m in members if m != url},
        key=lambda m: hashlib.sha256(f"{url}\n{m}".encode()).digest(),
        reverse=True,
    )


def _fields(entry: Entry) -> tuple[str, str, Any, tuple[Any, ...], str, list[Any]]:
    return entry.offset, entry.namespace, entry.room, entry.skip, entry.event, entry.args


def _as_tuple(skip: Any) -> tuple[Any, ...]:
    if isinstance(skip, (list, tuple)):
        return tuple(skip)
    return () if skip is None else (skip,)


class _Gate:
    """Holds a restoring client's live packets until its missed ones are queued, then drops
    live packets whose offset was already sent (for :data:`DEDUPE_SECONDS`)."""

    def __init__(self, socket: Any, seam: EngineSeam) -> None:
        self.socket = socket
        self.held: list[Any] | None = []
        self.sent: set[str] = set()

        def gate(send: Callable[[Any], Any]) -> Callable[[Any], Any]:
            async def gated(pkt: Any) -> Any:
                if pkt.packet_type == eio_packet.MESSAGE and not _is_connect(pkt.data):
                    if self.held is not None:
                        self.held.append(pkt)
                        return None
                    if self.sent and _offset_of(pkt.data) in self.sent:
                        return None
                return await send(pkt)

            return gated

        self._restore = seam.override_send(socket, gate)

    def open(self, packets: list[Any], sent: set[str] | None = None) -> None:
        """Queue ``packets`` (the missed events), then the held live ones not in ``sent``."""
        held = self.held or []
        self.held = None
        self.sent = sent or set()
        queue = self.socket.queue
        for pkt in packets:
            queue.put_nowait(pkt)
        for pkt in held:
            if not (self.sent and _offset_of(pkt.data) in self.sent):
                queue.put_nowait(pkt)
        if not self.sent:
            self._restore()
            return
        loop = asyncio.get_running_loop()
        loop.call_later(DEDUPE_SECONDS, self._close)

    def _close(self) -> None:
        self.sent = set()
        self._restore()


def _is_connect(data: Any) -> bool:
    return isinstance(data, str) and data[:1] in ("0", "4")


def _offset_of(data: Any) -> str | None:
    """The offset of an encoded Socket.IO EVENT (its last argument), if it has one."""
    if not isinstance(data, str) or data[:1] != "2" or not data.endswith('"]'):
        return None
    start = data.rfind(',"')
    if start < 0:
        return None
    try:
        value = json.loads(data[start + 1 : -1])
    except ValueError:
        return None
    return value if isinstance(value, str) else None
