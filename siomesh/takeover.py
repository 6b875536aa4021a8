"""Upgrade takeover: a session's WebSocket is served by the node it lands on, never relayed.

Behind a non-sticky balancer a client's WebSocket upgrade (``?sid=...&transport=websocket``)
lands on any node. Relaying it to the session's owner for the connection's whole life costs two
sockets and a second frame parse per message, and ties the client to a node that does not own
it. Instead, the node where the WebSocket lands (*B*) takes the session over from its owner
(*A*), and serves it; nothing is relayed afterwards.

What makes this safe is that only a *pristine* session moves: one whose Socket.IO layer has not
seen a packet yet, so that the app's ``connect`` handler runs exactly once, on the node that
ends up owning the session, and no app state is left behind on *A*.

1. **Hold (A).** A session created by a polling handshake holds its Socket.IO layer: Engine.IO
   MESSAGE packets it receives (the JS client's CONNECT, sent by polling alongside its upgrade
   probe) are buffered, not given to python-socketio, until the session settles: its upgrade
   completes on *A* itself (the UPGRADE packet, seen by :meth:`Takeover.watch_upgrade`), or
   ``takeover.window`` passes after the handshake (the held packets are then dispatched, in
   order), or it is handed off.
   python-socketio's client upgrades before it sends anything, so it is never held.
2. **Claim (B).** The upgrade lands on *B*, which sends ``session.takeover`` to *A* over its
   control link (authenticated: *A* hands the session only to the member that proved the
   secret, never to an address named in a message), bounded by ``takeover.timeout``. While
   the claim is pending, requests for the sid on *B* wait for it.
3. **Hand off (A).** Atomically (no await between the checks and the removal, so no packet of
   the session can be received in between): *A* takes the held packets and whatever is queued
   for the client, wakes a pending long-poll with a NOOP (the client polls again and reaches
   *B*), removes the session without a CLOSE, keeps a forward pointer ``sid -> B`` and answers
   with the session: sid, the handshake's ASGI scope, the held and queued packets. Its
   directory entry stays, marked moved, while the pointer lives: a peer that has not learned
   the new owner's entry yet routes to *A* (which forwards), never to a tombstone.
4. **Install (B).** *B* rebuilds the handshake environ from the scope (the same
   ``translate_request`` python-engineio used on *A*), creates the Engine.IO socket under the
   same sid, lets python-socketio store the environ, queues the packets for the client,
   dispatches the held packets in order, and serves the WebSocket itself. The directory now
   lists the sid under *B* (a live entry beats *A*'s tombstone, see :mod:`siomesh.routing`);
   until peers learn it, requests that still reach *A* follow the pointer (one extra hop).
5. **Fallback.** A session that cannot move (it already talked Socket.IO, its upgrade started
   elsewhere, the owner does not answer in time, a server without python-socketio) keeps
   today's relay; counted as ``takeover_fallbacks``, logged at DEBUG with the reason.

Ordering holds across the move: the client sends nothing over a new WebSocket before the
upgrade completes, and completes it only after its pending polls and posts returned (the
Engine.IO upgrade protocol), so every packet it sent by polling reached *A* before the hand-off
(and moved with it) or is forwarded to *B* by the pointer before anything it sends later.

One :class:`Takeover` per node; everything runs on the node's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from engineio import packet as eio_packet

from .codec import decode_packet, encode_packet
from .config import TakeoverConfig
from .counters import Stats
from .engine import EngineSeam
from .links.calls import CallFailed, CallRefused, Calls
from .links.frames import RequestMeta
from .links.link import Link, LinkClosed
from .links.pool import LinkPool, LinkUnavailable
from .orphans import take_queued
from .upgrade_forecast import UpgradeForecast

__all__ = ["TAKEOVER_CALL", "Hold", "Takeover"]

log = logging.getLogger("siomesh.takeover")

#: The call a node sends to take a session over (body: ``{"sid": ...}``).
TAKEOVER_CALL = "session.takeover"

#: Held packets per session beyond which the hold ends early (nothing from a client is buffered
#: without bound).
MAX_HELD = 64
#: A connect storm, as a node sees it before any claim has come late: at least STORM_SESSIONS
#: sessions created here within STORM_SPAN seconds. Its sessions are held STORM_WINDOW (within
#: ``takeover.max_window``): the first wave's probes queue behind its handshakes on every node,
#: and their claims came after the 0.25 s window, before any late claim could grow it (2 to 7
#: of 1,000 npm clients relayed for life in the connects bench; 0 in three runs with 0.6 s).
STORM_SESSIONS = 20
STORM_SPAN = 0.5
STORM_WINDOW = 0.75

_MESSAGE = eio_packet.MESSAGE
_UPGRADE = eio_packet.UPGRADE


class Hold:
    """A new session's hold (see the module docstring), kept on its socket as
    ``socket.siomesh_hold``."""

    __slots__ = (
        "agent",
        "buffer",
        "created",
        "dispatched",
        "inner",
        "phase",
        "polled",
        "skipped",
        "timer",
    )

    def __init__(self, inner: Callable[[Any], Any], created: float) -> None:
        self.inner = inner
        self.created = created
        self.buffer: deque[Any] = deque()
        #: whether the client sent a Socket.IO packet by polling while held (so the session's
        #: outcome, upgraded or not, teaches the forecast about its kind), and its User-Agent
        self.polled = False
        self.agent: str | None = None
        #: not held: its kind never upgrades (siomesh.upgrade_forecast)
        self.skipped = False
        #: "held" (buffering), "flushing", "open" (settled), "moved" (handed off)
        self.phase = "held"
        #: whether any MESSAGE reached python-socketio: the session is no longer pristine
        self.dispatched = False
        self.timer: asyncio.TimerHandle | None = None

    @property
    def movable(self) -> bool:
        return not self.dispatched and not self.buffer_flushing and self.phase != "moved"

    @property
    def buffer_flushing(self) -> bool:
        return self.phase == "flushing"


class Takeover:
    """The node's takeover machinery: holds (owner side), claims and installs (taker side),
    forward pointers. ``eio``/``sio`` are the node's servers (``sio`` None: no takeover),
    ``is_member(url)`` says whether a URL is a live member."""

    def __init__(
        self,
        config: TakeoverConfig,
        *,
        seam: EngineSeam,
        links: LinkPool,
        is_member: Callable[[str], bool],
        stats: Stats,
        pointer_ttl: float,
        on_moved: Callable[[str, float], None] | None = None,
    ) -> None:
        self.config = config
        self.enabled = config.enabled and seam.sio is not None
        self._seam = seam
        self._eio = seam.eio
        self._sio = seam.sio
        self._links = links
        self._is_member = is_member
        self._pointer_ttl = pointer_ttl
        #: told before a handed-off session is removed (the gossiped directory marks it moved)
        self._on_moved = on_moved
        self.stats = stats
        #: which client kinds upgrade (a session of a kind that never does is not held)
        self.forecast = UpgradeForecast()
        #: how long after their handshake recent claims came (seconds): under a connect
        #: storm probes come late, and the hold grows to match (up to ``max_window``)
        self._claim_delays: deque[float] = deque(maxlen=64)
        #: when the last STORM_SESSIONS sessions were created here (loop time)
        self._created: deque[float] = deque(maxlen=STORM_SESSIONS)
        #: sid -> the member this node handed it to (forward pointers, kept ``pointer_ttl``)
        self.pointers: dict[str, str] = {}
        self._pointer_expiry: deque[tuple[float, str]] = deque()
        #: sid -> set once this node's claim on it ended (installed or not)
        self.pending: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        #: per-session notes for the demo and for debugging: sid -> how it moved
        self.origins: dict[str, str] = {}

    # -- owner side: holding -------------------------------------------------------------------

    def hold(self, socket: Any, receive: Callable[[Any], Any]) -> Any:
        """Packet-in hook (:mod:`siomesh.engine`, outermost): hold every session created here
        by a handshake (not one this node installs from a takeover)."""
        if not self.enabled or getattr(socket, "siomesh_installed", False):
            return receive
        sid = socket.sid
        loop = asyncio.get_running_loop()
        hold = Hold(receive, loop.time())
        socket.siomesh_hold = hold
        self._created.append(hold.created)

        async def held_receive(pkt: Any) -> Any:
            kind = pkt.packet_type
            if kind == _MESSAGE:
                if hold.phase in ("held", "flushing"):
                    if socket.upgraded and hold.phase == "held":
                        # a WebSocket handshake, or the upgrade completed here: settled
                        await self.release(socket)
                        return await self._dispatch(hold, pkt)
                    if not hold.polled and hold.phase == "held":
                        hold.polled = True
                        hold.agent = self._agent(sid)
                        if self.config.learn and not self.forecast.may_upgrade(hold.agent):
                            # clients of this kind never upgrade: no window to wait for
                            hold.skipped = True
                            self.stats.bump("takeover_holds_skipped")
                            await self.release(socket)
                            return await self._dispatch(hold, pkt)
                    hold.buffer.append(pkt)
                    if hold.phase == "held":
                        if len(hold.buffer) >= MAX_HELD:
                            await self.release(socket)
                        elif hold.timer is None:
                            hold.timer = loop.call_at(
                                hold.created + self.window(), self._release_later, socket
                            )
                    return None
                if hold.phase == "moved":
                    # Cannot happen (the hand-off is atomic with respect to receiving); if it
                    # did, the packet would be lost: say so.
                    self.stats.bump("takeover_lost")
                    log.warning("siomesh: a packet reached session %s after it moved", sid)
                    return None
                return await self._dispatch(hold, pkt)
            result = await hold.inner(pkt)
            # (python-engineio 4 reads a WebSocket's UPGRADE packet itself; an upgrade that
            # lands here is seen by watch_upgrade. Kept for a server that passes it on.)
            if kind == _UPGRADE:
                if hold.polled:
                    self.forecast.record(hold.agent, True)
                    hold.polled = False  # one outcome per session
                if hold.phase == "held":
                    await self.release(socket)  # the transport settled on this node
            return result

        return held_receive

    @staticmethod
    async def _dispatch(hold: Hold, pkt: Any) -> Any:
        hold.dispatched = True
        return await hold.inner(pkt)

    def window(self) -> float:
        """How long a new session is held: ``takeover.window``, or longer (up to
        ``takeover.max_window``) when recent claims came later than that after their
        handshake, or during a connect storm (:data:`STORM_SESSIONS` sessions created within
        :data:`STORM_SPAN`): probes queue behind handshakes on a loaded node."""
        base = self.config.window
        if base <= 0:
            return base
        held = base
        if self._claim_delays:
            held = max(held, 1.5 * max(self._claim_delays))
        if len(self._created) == STORM_SESSIONS:
            now = asyncio.get_running_loop().time()
            if now - self._created[0] <= STORM_SPAN:
                held = max(held, STORM_WINDOW)
        return min(held, max(base, self.config.max_window))

    def _agent(self, sid: str) -> str | None:
        environ = self._seam.environ(sid)
        agent = environ.get("HTTP_USER_AGENT") if environ is not None else None
        return agent if isinstance(agent, str) else None

    def _release_later(self, socket: Any) -> None:
        hold: Hold | None = getattr(socket, "siomesh_hold", None)
        if hold is not None and hold.phase == "held":
            loop = asyncio.get_running_loop()
            # The window as it stands now, not as it stood when the timer was set: in a
            # connect storm the first late claims grow it while earlier sessions are held.
            deadline = hold.created + self.window()
            if deadline > loop.time() + 0.001 and hold.polled:
                hold.timer = loop.call_at(deadline, self._release_later, socket)
                return
            hold.timer = None
            if hold.polled:
                # No claim yet; the probe may still come (late, under a storm). Only once
                # nothing can be held that long does the session count as one that did not
                # upgrade: counted at the end of the window, a storm's late probes taught the
                # forecast that their kind never upgrades, and the next sessions of that kind
                # were not held and were relayed.
                loop.call_at(
                    hold.created + max(self.window(), self.config.max_window),
                    self._no_upgrade,
                    hold,
                )
        task = asyncio.ensure_future(self.release(socket))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def watch_upgrade(
        self, sid: str, receive: Callable[[], Awaitable[dict[str, Any]]]
    ) -> Callable[[], Awaitable[dict[str, Any]]]:
        """``receive`` of a WebSocket for session ``sid`` that this node, its owner, serves
        (its upgrade landed here): once the client's UPGRADE packet has been read, the
        session's hold ends and its outcome is recorded (it upgraded). python-engineio reads
        the probe and the UPGRADE packet itself, so they never reach the packet-in hook: without
        this, a JS client whose upgrade landed on its owner had its CONNECT held for the whole
        window, and counted as a client that does not upgrade."""
        socket = self._eio.sockets.get(sid)
        hold: Hold | None = getattr(socket, "siomesh_hold", None)
        # Watched while held, and while its outcome is open (``polled``): a probe later than
        # the window that lands here still upgrades. Counted as "did not upgrade" at
        # max_window instead, a storm's late probes on their own nodes (one in three behind
        # round-robin) made the forecast stop holding a kind that upgrades: every session of
        # it then went unheld, and each whose probe landed elsewhere was relayed for life.
        if socket is None or hold is None or (hold.phase != "held" and not hold.polled):
            return receive
        loop = asyncio.get_running_loop()
        watching = True

        async def watched() -> dict[str, Any]:
            nonlocal watching
            message = await receive()
            if watching and message.get("type") == "websocket.receive":
                data = message.get("text") or message.get("bytes")
                if data in ("5", b"5"):
                    watching = False
                    # python-engineio marks the socket upgraded as soon as it reads this,
                    # before its next await: after this task's step, it has
                    loop.call_soon(self._upgraded_here, socket)
            return message

        return watched

    def _upgraded_here(self, socket: Any) -> None:
        hold: Hold | None = getattr(socket, "siomesh_hold", None)
        if hold is None or not socket.upgraded:
            return
        if hold.polled:
            hold.polled = False  # one outcome per session
            self.forecast.record(hold.agent, True)
        if hold.phase != "held":
            return  # released already (the window passed, or its kind is not held)
        task = asyncio.ensure_future(self.release(socket))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _no_upgrade(self, hold: Hold) -> None:
        """``max_window`` passed since the handshake of a session held for its probe: if its
        transport has not moved or upgraded by now (its outcome is still open), it did not."""
        if hold.polled:
            hold.polled = False  # one outcome per session
            self.forecast.record(hold.agent, False)

    async def release(self, socket: Any) -> None:
        """End a session's hold: dispatch its held packets, in order (idempotent)."""
        hold: Hold | None = getattr(socket, "siomesh_hold", None)
        if hold is None or hold.phase != "held":
            return
        if socket.closed:
            hold.buffer.clear()  # the client left while held: nothing to dispatch
            hold.phase = "open"
            return
        if hold.timer is not None:
            hold.timer.cancel()
            hold.timer = None
        hold.phase = "flushing"
        try:
            while hold.buffer:  # packets that arrive meanwhile join the end of the buffer
                await self._dispatch(hold, hold.buffer.popleft())
        finally:
            if hold.phase == "flushing":
                hold.phase = "open"

    # -- owner side: handing off ---------------------------------------------------------------

    def hand_off(self, sid: str, to: str) -> dict[str, Any] | str:
        """Give session ``sid`` to member ``to``: its state, or why not. Does not await: no
        packet of the session can be received between the checks and the removal."""
        socket = self._eio.sockets.get(sid)
        if socket is None:
            return "unknown session"
        hold: Hold | None = getattr(socket, "siomesh_hold", None)
        if hold is not None and (hold.polled or hold.skipped):
            # a claim for a session that sent its CONNECT by polling: how long it took
            self._claim_delays.append(asyncio.get_running_loop().time() - hold.created)
        if hold is not None and hold.dispatched and (hold.polled or hold.skipped):
            # its WebSocket landed elsewhere after its packets were dispatched: a kind that
            # does upgrade (a wrong forecast, or a claim later than the window)
            self.forecast.record(hold.agent, True)
            hold.polled = False
            if hold.skipped:
                self.stats.bump("takeover_mispredicted")
                log.debug("siomesh: session %s was not held but upgrades elsewhere", sid)
        if hold is None or not hold.movable:
            return "the session already talks Socket.IO here"
        if socket.closed or socket.closing or socket.upgrading or socket.upgraded:
            return "the session's transport settled here"
        if not self._is_member(to):
            return "not a live member"
        environ = self._seam.environ(sid)
        scope = environ.get("asgi.scope") if environ is not None else None
        if not isinstance(scope, dict):
            return "no handshake environ"
        if hold.polled:
            self.forecast.record(hold.agent, True)
        queued = [encode_packet(pkt) for pkt in take_queued(socket)]
        held = [encode_packet(p) for p in hold.buffer]
        hold.buffer.clear()
        if hold.timer is not None:
            hold.timer.cancel()
            hold.timer = None
        hold.phase = "moved"
        # a pending long-poll gets a NOOP: the client polls again and reaches the new owner
        self._seam.retire_session(socket)
        if self._on_moved is not None:
            self._on_moved(sid, self._pointer_ttl)
        self._seam.forget_session(sid)
        self._add_pointer(sid, to)
        self.stats.bump("sessions_handed_off")
        meta = RequestMeta.from_scope(scope, list(scope.get("headers", [])))
        return {"scope": meta.to_wire(), "held": held, "queued": queued}

    def _add_pointer(self, sid: str, to: str) -> None:
        now = asyncio.get_running_loop().time()
        while self._pointer_expiry and self._pointer_expiry[0][0] <= now:
            _, old = self._pointer_expiry.popleft()
            self.pointers.pop(old, None)
        self.pointers[sid] = to
        self._pointer_expiry.append((now + self._pointer_ttl, sid))

    def moved_to(self, sid: str) -> str | None:
        """The live member this node handed ``sid`` to, if any."""
        target = self.pointers.get(sid)
        if target is None or not self._is_member(target):
            return None
        return target

    def serve_calls(self, calls: Calls) -> None:
        """Serve ``session.takeover`` calls (peers claiming a session of this node)."""
        calls.serve(TAKEOVER_CALL, self._serve_claim, unsent=self._claim_unsent)

    async def _serve_claim(self, link: Link, body: bytes) -> bytes:
        """Answer a ``session.takeover`` call from ``link.peer`` (authenticated by the link)."""
        try:
            sid = json.loads(body)["sid"]
            if not isinstance(sid, str):
                raise TypeError("sid")
        except (ValueError, TypeError, KeyError) as exc:
            raise CallRefused("malformed takeover call") from exc
        if not self.enabled:
            raise CallRefused("takeover is disabled on the owner")
        result = self.hand_off(sid, link.peer)
        if isinstance(result, str):
            raise CallRefused(result)
        log.debug("siomesh: session %s handed to %s", sid, link.peer)
        return json.dumps(result).encode()

    def _claim_unsent(self, link: Link, body: bytes) -> None:
        # the claimer cannot learn it: its client's WebSocket gets relayed to us, follows the
        # pointer back to it and is refused there; the client reconnects
        self.stats.bump("takeover_lost")
        log.warning("siomesh: a takeover answer to %s could not be sent", link.peer)

    # -- taker side ----------------------------------------------------------------------------

    async def claim(self, sid: str, owner: str) -> str | None:
        """Take session ``sid`` over from ``owner``: None when it is now served here (the
        caller serves the WebSocket locally), else why not (the caller relays it; counted)."""
        if not self.enabled:
            return "takeover is disabled here"
        if sid in self.pending or sid in self._eio.sockets:
            return "another WebSocket of this session is being taken over"
        done = self.pending[sid] = asyncio.Event()
        reason: str | None = None
        try:
            try:
                state = await self._ask(sid, owner)
            except (LinkUnavailable, LinkClosed, asyncio.TimeoutError) as exc:
                # Unknown whether the owner handed it off; if it did, the relay finds the
                # pointer back here and the client reconnects (counted by the owner).
                reason = f"the owner did not answer: {exc!r}"
                return reason
            if isinstance(state, str):
                reason = state
                return reason
            try:
                await self._install(sid, state, owner)
            except Exception as exc:
                self.stats.bump("takeover_lost")
                log.warning("siomesh: session %s from %s not installed: %r", sid, owner, exc)
                reason = f"install failed: {exc!r}"
                return reason
            self.stats.bump("takeovers")
            return None
        finally:
            if reason is not None:
                self.stats.bump("takeover_fallbacks")
                log.debug("siomesh: session %s not taken over from %s: %s", sid, owner, reason)
            del self.pending[sid]
            done.set()

    async def _ask(self, sid: str, owner: str) -> dict[str, Any] | str:
        try:
            answer = await self._links.calls.call(
                owner, TAKEOVER_CALL, json.dumps({"sid": sid}).encode(), timeout=self.config.timeout
            )
        except CallFailed as exc:
            return str(exc)
        state = json.loads(answer)
        if not isinstance(state, dict):
            return "malformed answer"
        return state

    async def _install(self, sid: str, state: dict[str, Any], owner: str) -> None:
        scope = RequestMeta.from_wire(state["scope"]).scope("http")
        queued = [decode_packet(p) for p in state.get("queued", [])]
        held = [decode_packet(p) for p in state.get("held", [])]

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            return None

        environ = await self._seam.translate_request(scope, receive, send)
        environ["siomesh.taken_over_from"] = owner
        socket = self._seam.new_session(sid, piped=False)
        self._eio.sockets[sid] = socket
        self.origins[sid] = owner
        if len(self.origins) > 4 * max(1, len(self._eio.sockets)) + 1024:
            self._prune_origins()
        await self._seam.run_connect(sid, environ)
        for pkt in queued:
            socket.queue.put_nowait(pkt)
        socket.schedule_ping()
        for pkt in held:
            await socket.receive(pkt)

    def _prune_origins(self) -> None:
        live = self._eio.sockets
        for sid in [s for s in self.origins if s not in live]:
            del self.origins[sid]

    async def wait_installed(self, sid: str) -> None:
        """Wait (bounded by ``takeover.timeout``) until this node's pending claim on ``sid``
        ends: a request for it is then served here, or routed as usual."""
        done = self.pending.get(sid)
        if done is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), self.config.timeout + 1.0)
