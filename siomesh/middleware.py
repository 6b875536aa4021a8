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

The node itself (configuration, links, forwarding, gossip, the adapter, status) is a
:class:`~siomesh.node.MeshNode`, ``SioMesh.node``; its attributes are also readable on the
middleware (``mesh.adapter``, ``mesh.cluster``, ``mesh.status()``...).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from .drain import bound_server_shutdown, drain_on_sigterm, uvicorn_server
from .forward import Receive, Scope, Send
from .local_peers import LocalPeers, hold_sigterm
from .metrics import render
from .node import MeshNode, respond, sid_of, tagging_send
from .routing import Action, decide

__all__ = ["SioMesh"]

log = logging.getLogger("siomesh")

_MESH_PREFIX = b"x-siomesh-"


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
        # No node_url: a worker of uvicorn --workers or gunicorn, which opens a private peer
        # port of its own and finds the other workers of its machine (siomesh.local_peers).
        self.local = LocalPeers.prepare(node_url=node_url, env=env, options=options)
        if self.local is not None:
            node_url = self.local.node_url
        try:
            self.node = MeshNode(
                app,
                node_url=node_url,
                peers=peers,
                secret=secret,
                server=server,
                engineio_path=engineio_path,
                env=env,
                adapter=adapter,
                gossip=gossip,
                **options,
            )
        except BaseException:
            if self.local is not None:
                self.local.abandon()
            raise
        if self.local is not None:
            self.local.attach(self)
        config = self.node.config
        self.config = config
        self._engine_prefixes = self.node.engine.prefixes
        self._mesh_prefix = config.mesh_path + "/"
        self._link_path = config.mesh_path + "/link"
        self._rotation = 0

    def __getattr__(self, name: str) -> Any:
        # the node's public attributes (adapter, cluster, links, stats, status(), ...)
        if name.startswith("__") or name == "node":
            raise AttributeError(name)
        return getattr(self.node, name)

    async def startup(self) -> None:
        """Start the node's background work; idempotent."""
        if self.local is not None:
            await self.local.listen()
        await self.node.startup()
        if self.local is not None:
            await self.local.start()

    async def drain(self, *, linger: bool = True) -> None:
        """Hand this node's clients to its peers (see :meth:`MeshNode.drain`)."""
        await self.node.drain(linger=linger)

    async def shutdown(self) -> None:
        """Stop the node's background work; idempotent."""
        await self.node.shutdown()
        if self.local is not None:
            await self.local.close()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        startup_failed = False

        async def wrapped_receive() -> dict[str, Any]:
            nonlocal startup_failed
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                    server = uvicorn_server(receive)  # None under another server
                    drain_on_sigterm(self.node, server)
                    bound_server_shutdown(receive)
                    if self.local is not None:
                        hold_sigterm(self.local)  # outermost: runs before the drain
                        self.local.tune_server(server)
                except Exception:
                    log.exception("siomesh startup failed")
                    startup_failed = True
            elif message["type"] == "lifespan.shutdown":
                # the server stopped listening already: hand the sessions over, no lingering
                await self.node.drain(linger=False)
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
        if self.node.state == "starting":
            await self.startup()
        if kind == "http":
            # Connection: close on every answer given while this node drains, also of requests
            # that began before (see _closing_send)
            send = _closing_send(send, self.node.draining)
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
        return slashed.startswith(self._engine_prefixes)  # a tuple: one call, every request

    async def _engine_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        for name, _ in headers:  # a loop, not any(): every request pays for this scan
            if name.startswith(_MESH_PREFIX):
                # Peers never talk over plain HTTP (only over links): an x-siomesh-* header
                # from a client is a spoofing attempt or a stale proxy; the app must never
                # see it.
                scope = dict(scope)
                scope["headers"] = [(k, v) for k, v in headers if not k.startswith(_MESH_PREFIX)]
                break
        http = scope["type"] == "http"
        method = scope.get("method", "GET") if http else "GET"
        sid = sid_of(scope.get("query_string", b""))
        node = self.node
        if node.poll_refusals and await node.refuse_dropped_poll(scope, receive, send, sid):
            return
        takeover = node.takeover
        if sid is not None and sid in takeover.pending:
            await takeover.wait_installed(sid)  # this node is taking the session over
        if (
            http
            and sid is not None
            and sid in node.local_sids
            and method != "OPTIONS"
            and not self.config.served_by_header
        ):
            # The most frequent request of all: a poll or POST of a session this node owns
            # (every request behind an owner-aware balancer). decide() would serve it as a
            # "local sid" and nothing below applies to it.
            await self.app(scope, receive, send)
            return
        decision = decide(
            method=method,
            sid=sid,
            local_sids=self.node.local_sids,
            forwarded=False,
            view=self.node.cluster,
            keys=self.node.keys,
            moved=takeover.pointers,
        )
        target = decision.target if decision.action is Action.FORWARD else None
        if self.node.draining.is_set():
            if sid is not None and target is not None and scope["type"] == "websocket":
                # Neither taken over (this node is about to stop) nor relayed (the relay
                # would die with this node, and a call on its way with it): refused, the
                # client keeps its session on polling (python-engineio's and the JS client
                # do when an upgrade fails) and it moves to another node's WebSocket at its
                # next reconnection.
                self.node.stats.bump("upgrades_refused_draining")
                await receive()
                await send({"type": "websocket.close", "code": 1013})
                return
            if sid is None and method != "OPTIONS":
                if scope["type"] == "websocket":
                    # a WebSocket relayed through a node about to stop would die with it: the
                    # client retries its handshake, on another node
                    await receive()
                    await send({"type": "websocket.close", "code": 1013})
                    return
                # A draining node creates no session: a peer serves the handshake (its sid
                # then routes there), so a client that reconnects lands on a live node.
                target = self._next_peer()
        if self.config.served_by_header:
            name = b"x-siomesh-via" if target is not None else b"x-siomesh-served-by"
            send = tagging_send(send, name, self.config.node_url)
        if target is not None:
            claim = decision.reason != "moved"
            if await self.node.forward(scope, receive, send, target, claim=claim):
                return
            # Nothing reached the client: fall through to the local server's own answer.
        elif decision.action is Action.REJECT:
            self.node.stats.bump("rejected")
        elif sid is not None and scope["type"] == "websocket":
            receive = takeover.watch_upgrade(sid, receive)  # an upgrade landing on the owner
        await self.app(scope, receive, send)

    def _next_peer(self) -> str | None:
        peers = self.node.cluster.live_peers()
        if not peers:
            return None
        self._rotation = (self._rotation + 1) % len(peers)
        return peers[self._rotation]

    async def _mesh_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["path"] == self._link_path:
                await self.node.links.accept(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        path: str = scope["path"]
        if path == self.config.health_path:
            serving = self.node.state == "serving"
            body = json.dumps(
                {
                    "status": self.node.state,
                    "node": self.config.node_url,
                    "instance": self.node.instance,
                    "sessions": len(self.node.local_sids),
                }
            ).encode()
            await respond(send, 200 if serving else 503, body, b"application/json")
            return
        name = path[len(self._mesh_prefix) :]
        if name == "status" and scope.get("method") == "GET":
            await respond(send, 200, json.dumps(self.node.status()).encode(), b"application/json")
            return
        if name == "metrics" and scope.get("method") == "GET":
            await respond(send, 200, render(self.node.collector), CONTENT_TYPE_LATEST.encode())
            return
        # Nothing else: peers talk over links only. The body is never read.
        await respond(send, 404, b"unknown mesh endpoint", b"text/plain")


def _closing_send(send: Send, draining: asyncio.Event) -> Send:
    """``send`` of an HTTP request: once ``draining`` is set, every answer asks the balancer to
    open a new connection next time (``Connection: close``). Once the node stops listening, the
    balancer's next request is refused at connect and retried on another node, instead of
    dying on a reused keep-alive connection (a POST is not retried: its packets are lost and
    its client disconnected). Checked when the answer starts, not when the request came: a
    long-poll that began before the drain and was released at its end left its connection
    idle in nginx's pool, without the header, and the sender's next POST on it died as the
    node stopped (the rolling-restart recovery test, about 1 run in 15)."""

    async def closing(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and draining.is_set():
            message = dict(message)
            message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
        await send(message)

    return closing
