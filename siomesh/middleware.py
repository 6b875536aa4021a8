"""SioMesh: the ASGI middleware that makes any node answer for any session.

Per request it does one of four things, cheapest check first:

* not an Engine.IO path, not a mesh path: pass through untouched;
* ``health_path``: answer 200 (serving) or 503 (starting, draining);
* ``{mesh_path}/link``: a peer link (WebSocket; :mod:`siomesh.links`), the only way peers talk;
* ``{mesh_path}/status`` and ``{mesh_path}/metrics``: JSON and Prometheus views (block them at
  the balancer); any other ``mesh_path`` request: 404, its body never read;
* an Engine.IO request: :func:`siomesh.routing.decide`, then serve here, forward to the owner, or
  let the local server answer its own ``400 Invalid session`` (reject).

Lifespan is passed through to the wrapped app; the mesh's own work (peer links, gossip, the
adapter) starts before the app's startup completes and stops after the app's shutdown. With
lifespan disabled it starts on the first request. No per-request state is kept on ``self``.
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

from prometheus_client import CONTENT_TYPE_LATEST

from .cluster import ClusterView, StaticCluster
from .config import MeshConfig
from .discovery import EngineTarget, find_engine
from .forward import (
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
from .links.pool import LinkPool
from .metrics import MeshCollector, render
from .orphans import guard_poll
from .routing import Action, decide
from .runtime.gossip import GossipRuntime, TrackedSockets
from .sid import SidKeys, generation_tag, make_sid, node_tag

__all__ = ["SioMesh"]

log = logging.getLogger("siomesh")

Hook = Callable[[], Awaitable[None]]

_MESH_PREFIX = b"x-siomesh-"


def _sid_of(query_string: bytes) -> str | None:
    """The ``sid`` query parameter, as python-engineio reads it (first value wins)."""
    if b"sid=" not in query_string:
        return None
    values = urllib.parse.parse_qs(query_string.decode("latin-1")).get("sid")
    return values[0] if values else None


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
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


class SioMesh:
    """Wrap an ASGI app holding one python-socketio (or python-engineio) server.

    ``node_url``, ``peers``, ``secret`` and every :class:`~siomesh.config.MeshConfig` field may be
    given here or as ``SIOMESH_*`` environment variables. ``server`` names the Socket.IO server
    when it cannot be found by walking the app; ``engineio_path`` overrides the path served.
    Raises :class:`~siomesh.config.ConfigError` or :class:`~siomesh.discovery.DiscoveryError`
    at construction for anything misconfigured.

    ``adapter`` (default True) installs :class:`~siomesh.adapter.MeshManager` on the server when
    it uses python-socketio's default in-memory manager, so emits, rooms and acks reach clients
    on every node without a broker; ``self.adapter`` is that manager, or ``None`` (disabled, or
    the server keeps another manager such as ``AsyncRedisManager``).

    ``gossip`` (default True) runs the membership and directory protocol
    (:mod:`siomesh.runtime.gossip`): peers are then seeds, members join and leave at run time,
    and a dead or restarted owner's sessions are refused at once. ``gossip=False`` keeps the
    configured peer list as a fixed membership.
    """

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
        self.keys = SidKeys.from_secret(self.config.secret)
        self.node_tag = node_tag(self.keys, self.config.node_url)
        self.generation_tag = generation_tag(self.keys, self.generation)
        self.cluster: ClusterView = StaticCluster(
            self.config.node_url, self.config.peers, self.keys
        )
        eio = self.engine.eio
        self._local_sids: dict[str, Any] = eio.sockets
        self.max_body = self.config.max_body_bytes or int(eio.max_http_buffer_size)
        self._startup_hooks: list[Hook] = []
        self._shutdown_hooks: list[Hook] = []
        self._start_lock: asyncio.Lock | None = None
        self.state = "starting"
        self.stats: dict[str, int] = {
            "forwarded": 0,
            "forward_errors": 0,
            "rejected": 0,
        }
        poll_timeout = (
            float(eio.ping_interval)
            + float(getattr(eio, "ping_interval_grace_period", 0))
            + float(eio.ping_timeout)
            + self.config.poll_grace
        )
        #: this node's peer links; gossip, the adapter and forwarding all talk through them
        self.links = LinkPool(
            node_url=self.config.node_url,
            generation=self.generation,
            secret=self.config.secret,
            mesh_path=self.config.mesh_path,
            connect_timeout=self.config.connect_timeout,
            handshake_timeout=self.config.handshake_timeout,
            heartbeat=self.config.link_heartbeat,
            window=self.config.signature_window,
            max_buffer=self.config.link_buffer_bytes,
            max_frame=max(self.max_body * 2, 16 << 20),
            ssl_context=(
                ssl.create_default_context(cafile=self.config.peer_ca_file)
                if self.config.peer_ca_file
                else None
            ),
            stats=self.stats,
        )
        self.forwarder = Forwarder(
            self.links,
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
        self._install_sid_generator()
        prefixes = self.engine.prefixes
        self._engine_prefixes = prefixes
        self._mesh_prefix = self.config.mesh_path + "/"
        self._link_path = self.config.mesh_path + "/link"
        self._collector = MeshCollector(
            stats=self.all_stats,
            members=self._member_counts,
            directory=self._directory_sizes,
            sessions=lambda: len(self._local_sids),
        )
        self.gossip: GossipRuntime | None = None
        added: list[Callable[[str, Any], None]] = [lambda _, socket: guard_poll(socket)]
        removed: list[Callable[[str], None]] = []
        if gossip:
            runtime = GossipRuntime(self)
            self.gossip = runtime
            self.cluster = runtime.cluster
            added.append(lambda sid, _: runtime.sid_added(sid))
            removed.append(runtime.sid_removed)
            self.on_startup(self._start_gossip)
            self.on_shutdown(runtime.stop)
        tracked = TrackedSockets(eio.sockets, added, removed)
        eio.sockets = tracked
        self._local_sids = tracked
        from .adapter import MeshManager, install_adapter

        self.adapter: MeshManager | None = install_adapter(self) if adapter else None

    # -- public hooks for the runtime and the adapter -------------------------------------------

    def on_startup(self, hook: Hook) -> None:
        """Run ``hook`` when the mesh starts (before the wrapped app's startup completes)."""
        self._startup_hooks.append(hook)

    def on_shutdown(self, hook: Hook) -> None:
        """Run ``hook`` when the mesh stops (after the wrapped app's shutdown), in reverse order."""
        self._shutdown_hooks.append(hook)

    def make_sid(self) -> str:
        """A fresh sid owned by this node (installed as the server's ``generate_id``)."""
        return make_sid(self.keys, self.config.node_url, self.generation, secrets.token_bytes(12))

    def _install_sid_generator(self) -> None:
        # python-socketio takes its per-namespace sids from the same method, so they are
        # self-routing too.
        self.engine.eio.generate_id = self.make_sid

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
            log.info("siomesh node %s serving (tag %s)", self.config.node_url, self.node_tag)

    async def drain(self) -> None:
        """Report 503 on the health endpoint from now on (the balancer stops sending)."""
        if self.state == "serving":
            self.state = "draining"

    async def shutdown(self) -> None:
        """Stop the background work; idempotent."""
        if self.state == "stopped":
            return
        self.state = "stopped"
        for hook in reversed(self._shutdown_hooks):
            try:
                await hook()
            except Exception:
                log.exception("siomesh shutdown hook failed")
        await self.links.close()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        startup_failed = False

        async def wrapped_receive() -> dict[str, Any]:
            nonlocal startup_failed
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception:
                    log.exception("siomesh startup failed")
                    startup_failed = True
            elif message["type"] == "lifespan.shutdown":
                await self.drain()
            return message

        async def wrapped_send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete" and startup_failed:
                message = {"type": "lifespan.startup.failed", "message": "siomesh startup failed"}
            elif message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.shutdown()
            await send(message)

        await self.app(scope, wrapped_receive, wrapped_send)

    # -- request handling ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.state == "starting":
            await self.startup()
        path: str = scope["path"]
        if path.startswith(self._mesh_prefix) or path == self.config.health_path:
            await self._mesh_endpoint(scope, receive, send)
            return
        if self._is_engine_path(path):
            await self._engine_request(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _is_engine_path(self, path: str) -> bool:
        if not self._engine_prefixes:
            return True
        slashed = path if path.endswith("/") else path + "/"
        return any(slashed.startswith(p) for p in self._engine_prefixes)

    async def _engine_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if any(name.startswith(_MESH_PREFIX) for name, _ in headers):
            # Peers never talk over plain HTTP (only over links): an x-siomesh-* header from a
            # client is a spoofing attempt or a stale proxy; the app must never see it.
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in headers if not k.startswith(_MESH_PREFIX)]
        method = scope.get("method", "GET") if scope["type"] == "http" else "GET"
        sid = _sid_of(scope.get("query_string", b""))
        decision = decide(
            method=method,
            sid=sid,
            local_sids=self._local_sids,
            forwarded=False,
            view=self.cluster,
            keys=self.keys,
        )
        if self.config.served_by_header:
            send = self._tagging_send(send, forwarded=decision.action is Action.FORWARD)
        if decision.action is Action.FORWARD:
            assert decision.target is not None
            if await self._forward(scope, receive, send, decision.target):
                return
            # Nothing reached the client: fall through to the local server's own 400.
        elif decision.action is Action.REJECT:
            self.stats["rejected"] += 1
        await self.app(scope, receive, send)

    def _tagging_send(self, send: Send, *, forwarded: bool) -> Send:
        """Wrap ``send`` to add the served-by / via debug headers to the response."""
        name = b"x-siomesh-via" if forwarded else b"x-siomesh-served-by"
        value = self.config.node_url.encode()

        async def tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), (name, value)]
            await send(message)

        return tagged

    async def _answer_lost(self, scope: Scope) -> None:
        sid = _sid_of(scope.get("query_string", b""))
        log.warning(
            "a forwarded poll of session %s was answered as its forwarder went away: its "
            "packets reached nobody, closing the session so that the client reconnects",
            sid,
        )
        if sid is not None and sid in self._local_sids:
            await self.engine.eio.disconnect(sid)

    async def _serve_forwarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request that a peer forwarded over a link: served here, never forwarded again."""
        if self.config.served_by_header:
            send = self._tagging_send(send, forwarded=False)
        await self.app(scope, receive, send)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, target: str) -> bool:
        """Forward to ``target``; False when nothing was sent and the client is untouched (the
        caller lets the local server answer its own 400)."""
        if scope["type"] == "websocket":
            connect = await receive()
            if connect["type"] != "websocket.connect":
                return True
            try:
                await self.forwarder.forward_websocket(scope, receive, send, target)
            except (OwnerUnreachable, OwnerRefused) as exc:
                # The client is not accepted yet: close it the way python-engineio closes an
                # unknown sid (uvicorn answers 403), so it reconnects.
                self.stats["forward_errors"] += 1
                log.warning("websocket not relayed to %s: %s", target, exc)
                await send({"type": "websocket.close", "code": 1008})
            else:
                self.stats["forwarded"] += 1
            return True
        try:
            body = await read_body(receive, self.max_body, _content_length(scope["headers"]))
        except BodyTooLarge:
            await _respond(
                send, 413, f"request body exceeds {self.max_body} bytes".encode(), b"text/plain"
            )
            return True
        except OwnerUnreachable:
            return True  # the client left while sending its body
        try:
            if await self.forwarder.forward_http(scope, body, receive, send, target):
                self.stats["forwarded"] += 1
            else:
                self.stats["abandoned_polls"] = self.stats.get("abandoned_polls", 0) + 1
            return True
        except (OwnerUnreachable, OwnerLost) as exc:
            # Not sent, or sent without an answer (never resent: at most once). Either way the
            # client gets python-engineio's own 400 from the local server (an empty body, the
            # sid unknown here): every Engine.IO client treats it as a lost session and
            # reconnects.
            self.stats["forward_errors"] += 1
            log.warning("forward to %s failed, answering 400: %s", target, exc)

            async def empty() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            await self.app(dict(scope), empty, send)
            return True

    async def _mesh_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["path"] == self._link_path:
                await self.links.accept(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        path: str = scope["path"]
        if path == self.config.health_path:
            serving = self.state == "serving"
            body = json.dumps(
                {
                    "status": self.state,
                    "node": self.config.node_url,
                    "sessions": len(self._local_sids),
                }
            ).encode()
            await _respond(send, 200 if serving else 503, body, b"application/json")
            return
        name = path[len(self._mesh_prefix) :]
        if name == "status" and scope.get("method") == "GET":
            await _respond(send, 200, json.dumps(self.status()).encode(), b"application/json")
            return
        if name == "metrics" and scope.get("method") == "GET":
            await _respond(send, 200, render(self._collector), CONTENT_TYPE_LATEST.encode())
            return
        # Nothing else: peers talk over links only. The body is never read.
        await _respond(send, 404, b"unknown mesh endpoint", b"text/plain")

    async def _start_gossip(self) -> None:
        assert self.gossip is not None
        sio = self.engine.sio
        if sio is not None:
            self.gossip.hook_manager(sio.manager)
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
        return {self.config.node_url: len(self._local_sids)}

    def all_stats(self) -> dict[str, int]:
        """Every counter of this node (forwarding, links, gossip, adapter): what status shows
        under ``stats`` and metrics export as ``siomesh_<name>``."""
        stats = dict(self.stats)
        stats["links_open"] = self.links.open_links()
        adapter = self.adapter
        if adapter is not None:
            for key, value in adapter.stats.items():
                stats[f"adapter_{key}"] = value
            for channel in adapter.link_stats().values():
                for key, value in channel.items():
                    stats[f"adapter_{key}"] = stats.get(f"adapter_{key}", 0) + value
            stats["adapter_queued"] = sum(adapter.queue_sizes().values())
        return stats

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot of this node, for introspection and ``siomesh status``."""
        return {
            "node": self.config.node_url,
            "tag": self.node_tag,
            "generation": self.generation,
            "state": self.state,
            "sessions": len(self._local_sids),
            "stats": self.all_stats(),
            "members": self._members_status(),
            "directory": self._directory_sizes(),
            "links": self.links.peer_links(),
            "relayed_websockets": self.stats.get("relayed_websockets", 0),
        }

    def _members_status(self) -> list[dict[str, Any]]:
        describe = getattr(self.cluster, "members_status", None)
        if describe is not None:
            result: list[dict[str, Any]] = describe()
            return result
        return [
            {"url": url, "state": "alive"} for url in sorted(getattr(self.cluster, "peer_urls", ()))
        ]


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
