"""MeshNode: one siomesh node, composed of its parts; the middleware only routes ASGI scopes.

A node owns, and wires together through narrow interfaces:

* its configuration (:class:`~siomesh.config.MeshConfig`), identity (generation, sid keys and
  tags) and counters (``stats``, plain ints read by status and metrics at scrape time);
* the Engine.IO/Socket.IO server it serves (found in the wrapped app), whose ``generate_id``
  it replaces (self-routing sids) and whose ``sockets`` dict it tracks;
* its peer links (:class:`~siomesh.links.pool.LinkPool`), the forwarding ends
  (:class:`~siomesh.forward.Forwarder`, :class:`~siomesh.forward.ForwardedServer`), the gossip
  runtime (membership and directory; it provides the live cluster view) and the adapter
  (:class:`~siomesh.adapter.MeshManager`). Gossip and the adapter see the node only through
  :class:`siomesh.seams.NodeContext`.

Lifecycle: :meth:`startup` (idempotent) runs the parts' startup hooks in order,
:meth:`drain` turns health to 503, :meth:`shutdown` runs the shutdown hooks in reverse, then
closes the links. Everything runs on one event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .adapter import MeshManager, install_adapter
from .cluster import ClusterView, StaticCluster
from .config import MeshConfig
from .counters import Stats
from .discovery import EngineTarget, find_engine
from .engine import EngineSeam
from .forward import (
    FORWARDED_BY,
    RELAY_REASON_KEY,
    VIA_KEY,
    BodyTooLarge,
    ForwardedServer,
    Forwarder,
    OwnerLost,
    OwnerRefused,
    OwnerUnreachable,
    Receive,
    Scope,
    Send,
    read_body,
)
from .links.frames import FrameType
from .links.link import Link
from .links.pool import LinkPool
from .metrics import MeshCollector
from .orphans import guard_poll
from .recovery import Recovery
from .routing import Action, decide
from .runtime.gossip import GossipRuntime
from .seams import Hook
from .selfcheck import self_checks
from .sessions import (
    PollRefusals,
    awaits_ack,
    count_acks_polled,
    count_calls_in,
    count_calls_out,
    drop_session,
    is_quiet,
    is_safe_to_drop,
)
from .sid import SidKeys, generation_tag, make_sid, node_tag, parse_sid
from .takeover import Takeover

__all__ = ["NODE_DRAIN_CALL", "MeshNode", "respond", "sid_of", "tagging_send"]

#: The call that ``siomesh drain URL`` sends over a control link.
NODE_DRAIN_CALL = "node.drain"

log = logging.getLogger("siomesh")

#: How long before a draining node stops listening it releases the long-polls it holds for
#: other nodes' sessions (at most a third of ``drain_timeout``).
RELEASE_BEFORE_EXIT = 1.0
#: The least time a drain gives a hand-off of kept sessions (the last one comes when the drain's
#: own time is up; the SIGTERM handler allows ``drain_timeout`` + 1 s in all)
HANDOFF_FINAL = 0.75


def sid_of(query_string: bytes) -> str | None:
    """The ``sid`` query parameter, as python-engineio reads it (``parse_qs``: first non-empty
    value wins). Every request pays for this, so a query without escapes (what every
    Engine.IO client sends) is scanned instead of parsed; anything else is parsed."""
    if b"%" in query_string or b"+" in query_string:
        return _parsed_sid(query_string)  # "s%69d=..." is a sid too
    start = query_string.find(b"sid=")
    if start < 0:
        return None
    while start > 0 and query_string[start - 1] != 0x26:  # not preceded by "&": "xsid="
        start = query_string.find(b"sid=", start + 1)
        if start < 0:
            return None
    start += 4
    end = query_string.find(b"&", start)
    value = query_string[start:] if end < 0 else query_string[start:end]
    if not value:  # parse_qs skips blank values: a later sid= may count
        return _parsed_sid(query_string)
    return value.decode("latin-1")


def _parsed_sid(query_string: bytes) -> str | None:
    values = urllib.parse.parse_qs(query_string.decode("latin-1")).get("sid")
    return values[0] if values else None


def tagging_send(send: Send, name: bytes, node_url: str) -> Send:
    """Wrap ``send`` to add a debug header naming this node to the response."""
    value = node_url.encode()

    async def tagged(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", []), (name, value)]
        await send(message)

    return tagged


class MeshNode:
    """See the module docstring. Raises :class:`~siomesh.config.ConfigError` or
    :class:`~siomesh.discovery.DiscoveryError` at construction for anything misconfigured."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        *,
        node_url: str | None = None,
        peers: list[str] | tuple[str, ...] | str | None = None,
        secret: str | bytes | None = None,
        server: Any = None,
        engineio_path: str | None = None,
        env: Mapping[str, str] | None = None,
        adapter: bool = True,
        gossip: bool = True,
        **options: Any,
    ) -> None:
        self.app = app
        self.config = MeshConfig.build(
            env, node_url=node_url, peers=peers, secret=secret, **options
        )
        self.engine: EngineTarget = find_engine(app, server, engineio_path)
        #: This process's generation: later starts get larger numbers.
        self.generation = time.time_ns()
        #: a random name of this process, shown by the health endpoint: a node that finds
        #: another instance behind its own node_url knows two processes claim it
        self.instance = secrets.token_hex(6)
        self.keys = SidKeys.from_secret(self.config.secret)
        self.node_tag = node_tag(self.keys, self.config.node_url)
        self.generation_tag = generation_tag(self.keys, self.generation)
        self.cluster: ClusterView = StaticCluster(
            self.config.node_url, self.config.peers, self.keys
        )
        eio = self.engine.eio
        self.local_sids: dict[str, Any] = eio.sockets
        self.max_body = self.config.max_body_bytes or int(eio.max_http_buffer_size)
        self._startup_hooks: list[Hook] = []
        self._shutdown_hooks: list[Hook] = []
        self._start_lock: asyncio.Lock | None = None
        self.state = "starting"
        #: set when draining begins: handshakes are forwarded to peers
        self.draining = asyncio.Event()
        #: set shortly before a draining node stops listening: long-polls it holds for other
        #: nodes' sessions are released with a NOOP (their clients poll again, elsewhere).
        #: Not at once: a client whose polls keep landing here (a passive balancer) would
        #: re-poll in a tight loop for the whole drain.
        self.release_polls = asyncio.Event()
        #: polling sessions being dropped at drain: their next poll is refused, their late
        #: POSTs still served (siomesh.sessions.PollRefusals)
        self.poll_refusals = PollRefusals()
        self._checks: asyncio.Future[None] | None = None
        self._drain_hooks: list[Callable[[], None]] = []
        #: the node's counters (siomesh.counters), shared by its parts
        self.stats = Stats("node")
        poll_timeout = (
            float(eio.ping_interval)
            + float(getattr(eio, "ping_interval_grace_period", 0))
            + float(eio.ping_timeout)
            + self.config.poll_grace
        )
        links = self.config.links
        #: this node's peer links; gossip, the adapter and forwarding all talk through them
        self.links = LinkPool(
            node_url=self.config.node_url,
            generation=self.generation,
            secret=self.config.secret,
            mesh_path=self.config.mesh_path,
            connect_timeout=links.connect_timeout,
            handshake_timeout=links.handshake_timeout,
            heartbeat=links.heartbeat,
            window=links.offer_window,
            max_buffer=links.buffer_bytes,
            max_frame=max(self.max_body * 2, 16 << 20),
            ssl_context=(
                ssl.create_default_context(cafile=links.peer_ca_file)
                if links.peer_ca_file
                else None
            ),
            stats=self.stats,
        )
        self.forwarder = Forwarder(
            self.links,
            release=self.release_polls,
            poll_timeout=poll_timeout,
            request_timeout=self.config.request_timeout,
            stats=self.stats,
        )
        self.forwarded = ForwardedServer(
            self._serve_forwarded,
            send_timeout=poll_timeout,
            stats=self.stats,
            on_lost=self._answer_lost,
        )
        self.links.dispatcher.serve(FrameType.REQUEST, self.forwarded.serve_request)
        self.links.dispatcher.serve(FrameType.WS_OPEN, self.forwarded.serve_websocket)
        self.collector = MeshCollector(
            stats=self.all_stats,
            members=self._member_counts,
            directory=self._directory_sizes,
            sessions=lambda: len(self.local_sids),
        )
        self.gossip: GossipRuntime | None = None
        #: the one place the libraries are touched: every part below registers its hooks there
        self.seam = EngineSeam(eio, self.engine.sio)
        #: upgrade takeover: WebSockets are served where they land (siomesh.takeover)
        self.takeover = Takeover(
            self.config.takeover,
            seam=self.seam,
            links=self.links,
            is_member=lambda url: self.cluster.is_live_member(url),
            stats=self.stats,
            pointer_ttl=max(30.0, 2 * poll_timeout),
            on_moved=self._session_moved,
        )
        self._relays: dict[str, tuple[str, str]] = {}
        self._forwarded_by: dict[str, dict[str, int]] = {}
        seam = self.seam
        seam.on_packet_in("takeover.hold", self.takeover.hold)
        seam.on_packet_in("sessions.calls", count_calls_in)
        seam.on_packet_in("sessions.refusals", self.poll_refusals.guard_close)
        seam.on_packet_out("sessions.calls", count_calls_out)
        seam.on_poll("orphans.guard", guard_poll)
        seam.on_poll("sessions.acks", count_acks_polled)
        if gossip:
            runtime = GossipRuntime(self)
            self.gossip = runtime
            self.cluster = runtime.cluster
            seam.on_session_added(lambda sid, _: runtime.sid_added(sid))
            seam.on_session_removed(runtime.sid_removed)
            seam.on_rooms(runtime.room_entered, runtime.room_left)
            self.on_startup(self._start_gossip)
            self.on_shutdown(runtime.stop)
        # python-socketio takes its per-namespace sids from the same method, so they are
        # self-routing too.
        seam.install(self.make_sid)
        self.local_sids = seam.sockets
        #: connection state recovery (siomesh.recovery); off unless ``recovery.enabled``
        self.recovery = Recovery(
            self.config.recovery,
            seam=seam,
            node_url=self.config.node_url,
            # offsets must never repeat, not even after a restart under the same URL
            node_tag=self.node_tag + self.generation_tag,
            links=self.links,
            make_pid=self.make_sid,
            keys=self.keys,
            owner_of=self._owner_of_tag,
            live_peers=lambda: self.cluster.live_peers(),
            leaving_peers=self._leaving_peers,
            handing_peers=self._handing_peers,
            stats=self.stats,
            call_timeout=self.config.request_timeout,
            hurry_drop=self.poll_refusals.hurry,
        )
        self.adapter: MeshManager | None = install_adapter(self) if adapter else None
        # Calls over links (siomesh.links.calls): each part serves its own operations.
        self.takeover.serve_calls(self.links.calls)
        self.recovery.serve_calls(self.links.calls)
        self.links.calls.serve(NODE_DRAIN_CALL, self._serve_drain)

    # -- the NodeContext seam (siomesh.seams) ----------------------------------------------------

    @property
    def server(self) -> Any:
        return self.engine.sio

    def on_startup(self, hook: Hook) -> None:
        """Run ``hook`` when the mesh starts (before the wrapped app's startup completes)."""
        self._startup_hooks.append(hook)

    def on_drain(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` when draining begins (e.g. to stop accepting on a shared port)."""
        self._drain_hooks.append(hook)

    def on_shutdown(self, hook: Hook) -> None:
        """Run ``hook`` when the mesh stops (after the wrapped app's shutdown), in reverse order."""
        self._shutdown_hooks.append(hook)

    def make_sid(self) -> str:
        """A fresh sid owned by this node (installed as the server's ``generate_id``)."""
        return make_sid(self.keys, self.config.node_url, self.generation, secrets.token_bytes(12))

    # -- lifecycle -------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Start the mesh's background work; idempotent."""
        if self.state != "starting":
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self.state != "starting":
                return
            for hook in self._startup_hooks:
                await hook()
            self.state = "serving"
            self._checks = asyncio.ensure_future(self_checks(self, self.links.warn))
            log.info("siomesh node %s serving (tag %s)", self.config.node_url, self.node_tag)

    async def drain(self, *, linger: bool = True) -> None:
        """Hand this node's clients to its peers, then return (bounded by ``drain_timeout``).

        In order: health answers 503 and new sessions are created on peers (the middleware
        forwards handshakes from now on); peers are told this node is *leaving*; held
        long-polls this node forwards for others are released with a NOOP (their clients poll
        again, elsewhere); each local session gets up to ``drain_timeout / 2`` for packets
        already queued to it (acks of calls in flight) to be delivered, then is dropped so
        that its client reconnects at once, elsewhere (:func:`~siomesh.sessions.drop_session`);
        then the node keeps forwarding to its peers until ``drain_timeout`` has passed, so that
        balancers see the 503 before the listener closes (``linger=False`` skips that: at
        lifespan shutdown the server has stopped listening already). Idempotent; a node that
        never started only turns unhealthy.
        """
        if self.state not in ("serving", "starting"):
            return
        started = self.state == "serving"
        self.state = "draining"
        self.draining.set()
        for hook in self._drain_hooks:
            try:
                hook()
            except Exception:
                log.exception("siomesh drain hook failed")
        if not started:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        local = len(self.local_sids)
        log.warning(
            "siomesh node %s draining: leaving the cluster, handing %d sessions to peers",
            self.config.node_url,
            local,
        )
        if self.gossip is not None:
            self.gossip.announce_leave()
        # Each session is dropped at its first safe moment (no call awaiting its ack, nothing
        # queued for the client, halfway through its client's rhythm: is_safe_to_drop), or
        # when half the bound has passed.
        quiet_until = loop.time() + self.config.drain_timeout / 2
        results = await asyncio.gather(
            *(self._drop_when_quiet(sid, quiet_until) for sid in list(self.local_sids))
        )
        dropped = sum(results)
        self.stats.bump("drained_sessions", dropped)
        # their clients reconnect elsewhere now: hand the sessions kept for recovery to a
        # peer at once (this node answers for them meanwhile, and points to that peer after),
        # within what is left of the drain
        await self.recovery.hand_off(bound=max(HANDOFF_FINAL, deadline - loop.time()))
        log.warning(
            "siomesh node %s drained: %d sessions handed over; forwarding to peers for %.1f s "
            "more, then stopping",
            self.config.node_url,
            dropped,
            max(0.0, deadline - loop.time()),
        )
        # Keep listening until the bound: balancers see the 503 and stop sending, clients that
        # reconnect through this node are forwarded to peers, and nothing is refused meanwhile.
        # Clients that reconnect elsewhere meanwhile recover their sessions from here.
        if linger:
            release_at = deadline - min(RELEASE_BEFORE_EXIT, self.config.drain_timeout / 3)
            await asyncio.sleep(max(0.0, release_at - loop.time()))
            self.release_polls.set()
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            # sessions that reached this node meanwhile (a handshake it served just before
            # draining, a session restored here) go now, while their state can be handed over
            late = [sid for sid in list(self.local_sids) if sid in self.local_sids]
            if late:
                await asyncio.gather(*(drop_session(self.engine.eio, sid) for sid in late))
        self.release_polls.set()
        handed = await self.recovery.hand_off(bound=HANDOFF_FINAL)
        if handed:
            log.warning(
                "siomesh node %s: %d sessions kept for recovery handed to a peer",
                self.config.node_url,
                handed,
            )
        # where a slow stop spends its time (the server's own shutdown comes after this)
        log.warning(
            "siomesh node %s drained in %.1f s: stopping",
            self.config.node_url,
            self.config.drain_timeout - (deadline - loop.time()),
        )

    def _leaving_peers(self) -> list[str]:
        """Members that announced they leave (a draining node still answers for a while)."""
        describe = getattr(self.cluster, "members_status", None)
        if describe is None:
            return []
        return [m["url"] for m in describe() if m["state"] == "left" and not m.get("self")]

    def _handing_peers(self) -> list[str]:
        """Members that began to leave within a drain (``drain_timeout``, and a second): they
        may still hand their kept sessions to a peer."""
        left_within = getattr(self.cluster, "left_within", None)
        if left_within is None:
            return []
        urls: list[str] = left_within(self.config.drain_timeout + 1.0)
        return urls

    def _owner_of_tag(self, sid: str) -> str | None:
        parts = parse_sid(self.keys, sid)
        if parts is None:
            return None
        if parts.node_tag == self.node_tag:
            return self.config.node_url
        member = self.cluster.member_by_tag(parts.node_tag)
        return member.url if member is not None else None

    async def _serve_drain(self, link: Link, body: bytes) -> bytes:
        """``siomesh drain URL``: an authenticated peer (it proved the secret) asks this node
        to drain now, e.g. from a Kubernetes preStop hook; answered when done."""
        log.warning("siomesh node %s: drain requested by %s", self.config.node_url, link.peer)
        await self.drain()
        reply: dict[str, object] = {
            "node": self.config.node_url,
            "state": self.state,
            "drained_sessions": self.stats["drained_sessions"],
        }
        return json.dumps(reply).encode()

    async def _drop_when_quiet(self, sid: str, until: float) -> bool:
        loop = asyncio.get_running_loop()
        socket = self.local_sids.get(sid)
        while (
            socket is not None
            and not is_safe_to_drop(socket, time.monotonic())
            and loop.time() < until
        ):
            # checked often enough to land in the safe quarter of a fast client's beat
            gap = getattr(socket, "siomesh_gap", None) or 0.04
            await asyncio.sleep(min(0.005, max(0.001, gap / 8)))
            socket = self.local_sids.get(sid)
        if socket is not None and not is_quiet(socket):
            self.stats.bump("drain_calls_cut")
        return await self.poll_refusals.drop(self.engine.eio, sid)

    async def refuse_dropped_poll(
        self, scope: Scope, receive: Receive, send: Send, sid: str | None
    ) -> bool:
        """Answer a poll or an upgrade of a polling session being dropped at drain
        (:class:`~siomesh.sessions.PollRefusals`) as python-engineio answers one of an unknown
        session (its client reconnects); True if it did. POSTs are not refused: they carry
        what the client sent before it learnt; nor is a poll while a call the client sent
        meanwhile awaits its ack (the poll takes the ack; the next one is refused)."""
        if sid is None or sid not in self.poll_refusals:
            return False
        if scope["type"] == "websocket":
            self.poll_refusals.refused(sid)
            await receive()
            await send({"type": "websocket.close", "code": 1013})
            return True
        if scope.get("method") != "GET":
            return False
        socket = self.local_sids.get(sid)
        if socket is not None and awaits_ack(socket):
            # a call that crossed the drop on the wire awaits its ack: this poll carries it
            # (not mere broadcasts: in a busy room the client would never be refused)
            return False
        self.poll_refusals.refused(sid)
        await respond(send, 400, b'"Invalid session"', b"text/plain")
        return True

    async def shutdown(self) -> None:
        """Stop the background work; idempotent."""
        if self.state == "stopped":
            return
        self.state = "stopped"
        self.release_polls.set()
        if self._checks is not None:
            self._checks.cancel()
        for hook in reversed(self._shutdown_hooks):
            try:
                await hook()
            except Exception:
                log.exception("siomesh shutdown hook failed")
        await self.links.close()

    async def _answer_lost(self, scope: Scope) -> None:
        sid = sid_of(scope.get("query_string", b""))
        log.warning(
            "a forwarded poll of session %s was answered as its forwarder went away: its "
            "packets reached nobody, closing the session so that the client reconnects",
            sid,
        )
        if sid is not None and sid in self.local_sids:
            await drop_session(self.engine.eio, sid)

    async def _serve_forwarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request that a peer forwarded over a link: served here, never forwarded again,
        except to follow a session this node handed to another member (one more hop at most:
        a session moves once)."""
        # Hot path: most forwarded requests are polls of a local session on a node that moved
        # nothing; the sid is parsed only when something can depend on it.
        takeover = self.takeover
        debug = self.config.served_by_header
        websocket = scope["type"] == "websocket"
        if websocket or debug or takeover.pointers or takeover.pending:
            sid = sid_of(scope.get("query_string", b""))
            if sid is not None and sid in self.local_sids:
                if websocket:
                    self._note_relay(sid, scope)
                    # relayed here (its claim failed): the upgrade still completes here
                    receive = takeover.watch_upgrade(sid, receive)
                elif debug:
                    self._note_forwarded(sid, str(scope.get(FORWARDED_BY, "")))
            elif sid is not None:
                if sid in takeover.pending:
                    await takeover.wait_installed(sid)
                target = takeover.moved_to(sid) if sid not in self.local_sids else None
                if target is not None:
                    await self.forward(scope, receive, send, target, claim=False)
                    return
        if self.poll_refusals and await self.refuse_dropped_poll(
            scope, receive, send, sid_of(scope.get("query_string", b""))
        ):
            return
        if scope.get(VIA_KEY) and scope["type"] == "http":
            # The forwarding peer cannot reach this session's owner (a partition between
            # them): forward it there once, if it is a live member that we can reach; never to
            # the peer that asked, never again from the owner (it serves its own sids).
            decision = decide(
                method=str(scope.get("method", "GET")),
                sid=sid_of(scope.get("query_string", b"")),
                local_sids=self.local_sids,
                forwarded=False,
                view=self.cluster,
                keys=self.keys,
                moved=self.takeover.pointers,
            )
            target = decision.target
            if (
                decision.action is Action.FORWARD
                and target is not None
                and target != scope.get(FORWARDED_BY)
            ):
                self.stats.bump("forwarded_via")
                await self.forward(scope, receive, send, target, claim=False)
                return
        if self.config.served_by_header:
            send = tagging_send(send, b"x-siomesh-served-by", self.config.node_url)
        await self.app(scope, receive, send)

    def _session_moved(self, sid: str, linger: float) -> None:
        if self.gossip is not None:
            self.gossip.sid_moved(sid, linger)

    def _note_forwarded(self, sid: str, peer: str) -> None:
        counts = self._forwarded_by.get(sid)
        if counts is None:
            if len(self._forwarded_by) > 2 * len(self.local_sids) + 1024:
                for gone in [s for s in self._forwarded_by if s not in self.local_sids]:
                    del self._forwarded_by[gone]
            counts = self._forwarded_by[sid] = {}
        counts[peer] = counts.get(peer, 0) + 1

    def _note_relay(self, sid: str, scope: Scope) -> None:
        relays = self._relays
        relays[sid] = (str(scope.get(FORWARDED_BY, "")), str(scope.get(RELAY_REASON_KEY, "")))
        if len(relays) > 2 * len(self.local_sids) + 1024:
            for gone in [s for s in relays if s not in self.local_sids]:
                del relays[gone]

    def journey(self, sid: str) -> dict[str, Any] | None:
        """How Engine.IO session ``sid`` (owned here) reached this node, for demos and
        debugging: where its handshake was served, and where its WebSocket landed and whether
        it was served there, taken over from the handshake's node, or relayed (and why).
        None when the session is not owned here."""
        socket = self.local_sids.get(sid)
        if socket is None:
            return None
        sio = self.engine.sio
        environ = sio.environ.get(sid) if sio is not None else None
        scope = environ.get("asgi.scope", {}) if isinstance(environ, dict) else {}
        me = self.config.node_url
        taken_from = self.takeover.origins.get(sid)
        journey: dict[str, Any] = {
            "owner": me,
            "handshake": {
                "served_by": taken_from or me,
                "landed_on": scope.get(FORWARDED_BY) or taken_from or me,
            },
            "transport": "websocket" if socket.upgraded else "polling",
            "websocket": None,
            # polling requests that reached this owner through another node, per node
            # (counted only with served_by_header, the demo's debug mode: not on the hot path)
            "forwarded_by": dict(self._forwarded_by.get(sid, {})),
        }
        if taken_from is not None:
            journey["websocket"] = {"landed_on": me, "how": "taken over", "from": taken_from}
        elif sid in self._relays:
            peer, reason = self._relays[sid]
            journey["websocket"] = {"landed_on": peer, "how": "relayed", "reason": reason}
        elif socket.upgraded:
            journey["websocket"] = {"landed_on": me, "how": "served by the owner"}
        return journey

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, target: str, *, claim: bool
    ) -> bool:
        """Forward one Engine.IO request to member ``target``; False when nothing was sent and
        the client is untouched (the caller lets the local server answer its own 400).

        A WebSocket upgrade, with ``claim``, is first taken over from ``target``
        (:mod:`siomesh.takeover`) and then served here; otherwise it is relayed.
        """
        if scope["type"] == "websocket":
            connect = await receive()
            if connect["type"] != "websocket.connect":
                return True
            sid = sid_of(scope.get("query_string", b""))
            reason = "following the session to its new owner"
            if claim and sid is not None:
                if self.draining.is_set():
                    reason = "this node is draining"
                else:
                    why_not = await self.takeover.claim(sid, target)
                    if why_not is None:
                        replayed = False

                        async def replay() -> dict[str, Any]:
                            nonlocal replayed
                            if not replayed:
                                replayed = True
                                return connect
                            return await receive()

                        await self.app(scope, replay, send)
                        return True
                    reason = why_not
            try:
                await self.forwarder.forward_websocket(scope, receive, send, target, reason)
            except (OwnerUnreachable, OwnerRefused) as exc:
                # The client is not accepted yet: close it the way python-engineio closes an
                # unknown sid (uvicorn answers 403), so it reconnects.
                self.stats.bump("forward_errors")
                log.warning("websocket not relayed to %s: %s", target, exc)
                await send({"type": "websocket.close", "code": 1008})
            else:
                self.stats.bump("forwarded")
            return True
        try:
            body = await read_body(receive, self.max_body, _content_length(scope["headers"]))
        except BodyTooLarge:
            await respond(
                send,
                413,
                f"request body exceeds {self.max_body} bytes".encode(),
                b"text/plain",
            )
            return True
        except OwnerUnreachable:
            return True  # the client left while sending its body
        try:
            try:
                via = (
                    self._via_peer(scope, target)
                    if self.cluster.reached_indirectly(target)
                    else None
                )
                if via is not None:
                    # gossip says this node reaches the owner only through others (a cut):
                    # no dial that would wait out its connect timeout first
                    self.stats.bump("forwarded_via_first")
                    sent = await self.forwarder.forward_http(
                        scope, body, receive, send, via, via=True
                    )
                else:
                    sent = await self.forwarder.forward_http(scope, body, receive, send, target)
            except OwnerUnreachable as exc:
                # Nothing was sent. The owner is a live member (routing said so) that this
                # node cannot reach: a partition between the two, or the owner's side of a
                # heal not dialled yet. Ask a member that can reach it to forward it, rather
                # than answer 400 (the client's long-poll may be held at the owner, through
                # that member, for up to a ping timeout: it would be stuck until then).
                via = self._via_peer(scope, target)
                if via is None:
                    raise
                log.info("owner %s unreachable (%s): forwarding via %s", target, exc, via)
                sent = await self.forwarder.forward_http(scope, body, receive, send, via, via=True)
            if sent:
                self.stats.bump("forwarded")
            else:
                self.stats.bump("abandoned_polls")
            return True
        except (OwnerUnreachable, OwnerLost) as exc:
            # Not sent, or sent without an answer (never resent: at most once). Either way the
            # client gets python-engineio's own 400 from the local server (an empty body, the
            # sid unknown here): every Engine.IO client treats it as a lost session and
            # reconnects.
            self.stats.bump("forward_errors")
            log.warning("forward to %s failed, answering 400: %s", target, exc)

            async def empty() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            await self.app(dict(scope), empty, send)
            return True

    def _via_peer(self, scope: Scope, owner: str) -> str | None:
        """A live member, other than ``owner``, that this node holds a data link to and that
        may forward a request to ``owner`` for it; None for a request that was forwarded to
        this node already (one detour at most) or when there is no such member."""
        if FORWARDED_BY in scope:
            return None
        for peer in self.cluster.live_peers():
            if peer != owner and self.links.current(peer, "data") is not None:
                return peer
        return None

    async def _start_gossip(self) -> None:
        assert self.gossip is not None
        self.seam.hook_rooms()  # the manager the adapter may have installed meanwhile
        await self.gossip.start()

    def _member_counts(self) -> dict[str, int]:
        counts = getattr(self.cluster, "member_counts", None)
        if counts is not None:
            result: dict[str, int] = counts()
            return result
        return {"alive": len(self.cluster.live_peers()) + 1}

    def _directory_sizes(self) -> dict[str, int]:
        sizes = getattr(self.cluster, "directory_sizes", None)
        if sizes is not None:
            result: dict[str, int] = sizes()
            return result
        return {self.config.node_url: len(self.local_sids)}

    def all_stats(self) -> dict[str, int]:
        """Every counter of this node (forwarding, links, gossip, adapter): what status shows
        under ``stats`` and metrics export as ``siomesh_<name>`` (declared in
        siomesh.counters)."""
        self.stats.set("links_open", self.links.open_links())
        if self.recovery.enabled:
            self.recovery.count_sizes()
        stats = self.stats.snapshot()
        if self.gossip is not None:
            stats.update(self.gossip.node.membership_counts().snapshot())
        adapter = self.adapter
        if adapter is not None:
            adapter.stats.set("queued", sum(adapter.queue_sizes().values()))
            stats.update(adapter.stats.snapshot())
            for channel in adapter.channel_stats():
                for name, value in channel.snapshot().items():
                    stats[name] = stats.get(name, 0) + value
        return stats

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot of this node, for introspection and ``siomesh status``."""
        return {
            "node": self.config.node_url,
            "tag": self.node_tag,
            "generation": self.generation,
            "state": self.state,
            "sessions": len(self.local_sids),
            "stats": self.all_stats(),
            "members": self._members_status(),
            "directory": self._directory_sizes(),
            "links": self.links.peer_links(),
            "seeds": [
                {
                    "url": seed,
                    "linked": self.links.current(seed, "control") is not None,
                    "error": self.links.last_errors.get(seed),
                }
                for seed in self.config.peers
                if seed != self.config.node_url
            ],
            "relayed_websockets": self.stats["relayed_websockets"],
            "takeovers": self.stats["takeovers"],
            "takeover_fallbacks": self.stats["takeover_fallbacks"],
        }

    def _members_status(self) -> list[dict[str, Any]]:
        describe = getattr(self.cluster, "members_status", None)
        if describe is not None:
            result: list[dict[str, Any]] = describe()
            return result
        return [
            {"url": url, "state": "alive"} for url in sorted(getattr(self.cluster, "peer_urls", ()))
        ]


async def respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
