"""LinkPool: this node's links to and from its peers (dial, accept, reuse, report).

Per peer, this node dials at most one link of each kind (``control`` and ``data``,
:data:`~siomesh.links.handshake.LINK_KINDS`) and uses it for everything *it* initiates; the peer
dials its own links for what *it* initiates, and answers come back on the link that carried the
question. So a pair of nodes holds four connections whatever the number of sessions, requests
or relayed WebSockets between them (Erlang distribution keeps one; the second kind keeps
gossip, membership and call replies from ever waiting behind data, as Akka Artery's control
stream does).

Who may connect: an acceptor refuses, before accepting the WebSocket and before reading any
frame, every offer that does not prove the cluster secret, is not addressed to its own
advertised URL, is outside the time window or reuses a nonce. Gossip therefore only ever
arrives from secret holders over replay-proof links, and a URL learned by gossip is dialled only
with an offer that the dialled address must answer with proof of the secret before it is sent
anything else. Refusals are logged at WARNING (rate-limited) with the likely fix.

Bounds: a dial is bounded by ``connect_timeout`` plus ``handshake_timeout``; a failed dial
makes later background sends to that peer fail fast for a short, growing backoff; frames queued
while a link is being dialled are bounded per link (``max_pending``); every link's outbound
buffer is bounded by ``max_buffer`` bytes. Use from the node's event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from ..counters import Stats
from ..ratelimit import RateLimitedLog
from .calls import Calls
from .frames import FrameError, FrameType
from .handshake import (
    HEADER_FEATURES,
    LINK_FEATURES,
    LINK_KINDS,
    HandshakeError,
    LinkSecret,
    NonceCache,
    Offer,
    parse_features,
)
from .link import Dispatcher, Link

__all__ = ["LinkPool", "LinkUnavailable"]

log = logging.getLogger("siomesh.links")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
LinkListener = Callable[[Link], None]

_MAX_BACKOFF = 5.0
_FIRST_BACKOFF = 0.1


def _reason(exc: BaseException | None) -> str:
    """A failure's reason for a log line: never empty (``str(TimeoutError())`` is)."""
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    text = str(exc)
    return text if text else repr(exc)


class LinkUnavailable(Exception):
    """No link to the peer could be established (refused, unreachable, handshake failed)."""


class LinkPool:
    """See the module docstring."""

    def __init__(
        self,
        *,
        node_url: str,
        generation: int,
        secret: str | bytes,
        mesh_path: str,
        connect_timeout: float,
        handshake_timeout: float,
        heartbeat: float,
        window: float,
        max_buffer: int,
        max_frame: int,
        max_pending: int = 1024,
        ssl_context: ssl.SSLContext | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.node_url = node_url
        self.generation = generation
        self.secret = LinkSecret(secret)
        self.path = mesh_path + "/link"
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.heartbeat = heartbeat
        self.window = window
        self.max_buffer = max_buffer
        self.max_frame = max_frame
        self.max_pending = max_pending
        self.ssl_context = ssl_context
        self.dispatcher = Dispatcher()
        #: typed calls (operation, body, status) over this node's control links
        self.calls = Calls(self)
        self.dispatcher.serve(FrameType.CALL, self.calls.serve_stream)
        self.stats = stats if stats is not None else Stats()
        self._nonces = NonceCache(window)
        self._out: dict[tuple[str, str], Link] = {}
        self._inbound: set[Link] = set()
        self._dialling: dict[tuple[str, str], asyncio.Future[Link]] = {}
        self._pending: dict[tuple[str, str], deque[tuple[FrameType, bytes]]] = {}
        self._backoff: dict[tuple[str, str], tuple[float, float]] = {}  # until, last delay
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._up_listeners: list[LinkListener] = []
        self._down_listeners: list[LinkListener] = []
        self._closing = False
        self.warn = RateLimitedLog(log)
        #: why the last dial to each peer failed (cleared when one succeeds), for status
        self.last_errors: dict[str, str] = {}

    # -- listeners ------------------------------------------------------------------------------

    def on_link_up(self, listener: LinkListener) -> None:
        """Call ``listener(link)`` when a link this node dialled completes its handshake."""
        self._up_listeners.append(listener)

    def on_link_down(self, listener: LinkListener) -> None:
        """Call ``listener(link)`` when a link (either direction) closes."""
        self._down_listeners.append(listener)

    # -- outbound -------------------------------------------------------------------------------

    def current(self, peer: str, kind: str) -> Link | None:
        """The open link this node dialled to ``peer``, if any (never dials)."""
        link = self._out.get((peer, kind))
        return link if link is not None and link.is_open else None

    async def get(self, peer: str, kind: str, *, retry_now: bool = False) -> Link:
        """The open link to ``peer`` of ``kind``, dialled now if needed (concurrent callers
        share one dial). Raises :class:`LinkUnavailable`; bounded by the dial's timeouts.

        After a failed dial, later calls fail fast for a short backoff, unless ``retry_now``:
        the caller knows the peer is alive (a live member in gossip, e.g. a request for a
        session it owns) and would rather wait one dial than fail a client that nothing else
        can serve (after a partition heals, a backoff would answer 400 although the owner is
        back)."""
        link = self.current(peer, kind)
        if link is not None:
            return link
        if self._closing:
            raise LinkUnavailable("node is stopping")
        key = (peer, kind)
        future = self._dialling.get(key)
        backoff = self._backoff.get(key)
        if (
            future is None
            and not retry_now
            and backoff is not None
            and backoff[0] > time.monotonic()
        ):
            # the last dial failed a moment ago: fail fast instead of making every request
            # for that peer wait for its own dial (the backoff is short and grows to 5 s)
            raise LinkUnavailable(f"{peer}: unreachable (retrying in {backoff[1]:.1f} s)")
        if future is None:
            future = asyncio.ensure_future(self._dial(peer, kind))
            self._dialling[key] = future
            future.add_done_callback(functools.partial(self._dial_done, key))
        return await asyncio.shield(future)

    def post(self, peer: str, kind: str, frame: FrameType, payload: bytes) -> bool:
        """Send a stream-less frame to ``peer`` without waiting: on the open link, or queued
        (bounded) while one is dialled. False when refused (buffer full, backoff, stopping)."""
        link = self.current(peer, kind)
        if link is not None:
            return link.send(frame, 0, payload)
        if self._closing:
            return False
        key = (peer, kind)
        until = self._backoff.get(key)
        if until is not None and until[0] > time.monotonic() and key not in self._dialling:
            return False
        pending = self._pending.setdefault(key, deque())
        if len(pending) >= self.max_pending:
            self.stats.bump("link_pending_dropped")
            return False
        pending.append((frame, payload))
        if key not in self._dialling:
            task = asyncio.ensure_future(self._background_dial(peer, kind))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return True

    def ensure(self, peer: str, kind: str) -> None:
        """Start dialling ``peer`` in the background unless a link is open, a dial is under
        way, or the last dial failed less than a backoff ago; never blocks."""
        key = (peer, kind)
        if self._closing or self.current(peer, kind) is not None or key in self._dialling:
            return
        until = self._backoff.get(key)
        if until is not None and until[0] > time.monotonic():
            return
        task = asyncio.ensure_future(self._background_dial(peer, kind))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def revive(self, peer: str) -> None:
        """``peer`` was heard from (gossip, an inbound link): forget the backoff of failed
        dials to it, so the next send or request dials it at once."""
        for kind in LINK_KINDS:
            self._backoff.pop((peer, kind), None)

    async def _background_dial(self, peer: str, kind: str) -> None:
        with contextlib.suppress(LinkUnavailable):
            await self.get(peer, kind)

    def _dial_done(self, key: tuple[str, str], future: asyncio.Future[Link]) -> None:
        self._dialling.pop(key, None)
        pending = self._pending.pop(key, None)
        if future.cancelled() or future.exception() is not None:
            if not future.cancelled():
                self.last_errors[key[0]] = _reason(future.exception())
            _, last = self._backoff.get(key, (0.0, 0.0))
            delay = min(max(last * 2, _FIRST_BACKOFF), _MAX_BACKOFF)
            self._backoff[key] = (time.monotonic() + delay, delay)
            if pending:
                self.stats.bump("link_pending_dropped", len(pending))
            return
        self._backoff.pop(key, None)
        self.last_errors.pop(key[0], None)
        link = future.result()
        if pending:
            for frame, payload in pending:
                link.send(frame, 0, payload)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                # a blackholed peer fails after connect_timeout, not after the whole dial bound
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",),
            )
            if hasattr(self._session, "_retry_connection"):
                # aiohttp resends an idempotent request (the upgrade is a GET) once when the
                # connection drops before the answer; a link offer must never be sent twice
                # (its nonce is refused the second time, which would look like a secret
                # mismatch), so a failed dial fails, and the caller dials again with a new one.
                self._session._retry_connection = False
        return self._session

    async def _dial(self, peer: str, kind: str) -> Link:
        offer = Offer(
            sender=self.node_url,
            recipient=peer,
            kind=kind,
            generation=self.generation,
            nonce=secrets.token_bytes(16),
            time_ms=int(time.time() * 1000),
        )
        url = ("ws" + peer[4:] if peer.startswith("http") else peer) + self.path
        try:
            ws = await asyncio.wait_for(
                self._client().ws_connect(
                    url,
                    headers={
                        **self.secret.offer_headers(offer),
                        HEADER_FEATURES: ",".join(sorted(LINK_FEATURES)),
                    },
                    heartbeat=self.heartbeat,
                    max_msg_size=self.max_frame,
                    compress=0,
                    autoping=True,
                    ssl=self.ssl_context if self.ssl_context is not None else True,
                ),
                timeout=self.connect_timeout + self.handshake_timeout,
            )
        except aiohttp.WSServerHandshakeError as exc:
            self.stats.bump("link_dial_failures")
            if exc.status in (401, 403):
                self.warn.warning(
                    ("refused", peer),
                    "peer %s refused our link (HTTP %s): it does not accept our signature. "
                    "Check that every node has the same SIOMESH_SECRET, that node clocks agree "
                    "(NTP), and that %s is the URL that node was configured with "
                    "(its node_url)",
                    peer,
                    exc.status,
                    peer,
                )
            raise LinkUnavailable(f"{peer}: handshake refused: HTTP {exc.status}") from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            self.stats.bump("link_dial_failures")
            raise LinkUnavailable(f"{peer}: {exc!r}") from exc
        try:
            hello = await asyncio.wait_for(ws.receive(), self.handshake_timeout)
            if hello.type != aiohttp.WSMsgType.BINARY:
                raise HandshakeError(f"expected a hello frame, got {hello.type!r}")
            nonce, peer_generation = self.secret.verify_hello(offer, hello.data)
            await ws.send_bytes(self.secret.ack(offer, nonce))
        except (HandshakeError, asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.stats.bump("link_dial_failures")
            if isinstance(exc, HandshakeError):
                self.warn.warning(("hello", peer), "link to %s failed its handshake: %s", peer, exc)
            with contextlib.suppress(Exception):
                await ws.close()
            raise LinkUnavailable(f"{peer}: handshake failed: {exc!r}") from exc
        send_key, recv_key = self.secret.link_keys(offer, nonce)

        async def close(code: int) -> None:
            await ws.close(code=code)

        link = Link(
            peer=peer,
            kind=kind,
            dialler=True,
            peer_generation=peer_generation,
            send_key=send_key,
            recv_key=recv_key,
            write=ws.send_bytes,
            close=close,
            dispatcher=self.dispatcher,
            max_buffer=self.max_buffer,
            stats=self.stats,
        )

        async def read() -> bytes | None:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                data: bytes = msg.data
                return data
            if msg.type == aiohttp.WSMsgType.TEXT:
                raise FrameError("text message on a link")
            return None

        old = self._out.get((peer, kind))
        self._out[(peer, kind)] = link
        if old is not None and old.is_open:
            await old.shutdown(reason="replaced")
        self.stats.bump("links_dialled")
        self._run(link, read)
        for listener in self._up_listeners:
            listener(link)
        return link

    def _run(self, link: Link, read: Callable[[], Awaitable[bytes | None]]) -> None:
        task = asyncio.ensure_future(link.run(read))
        self._tasks.add(task)

        def done(_: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if self._out.get((link.peer, link.kind)) is link:
                del self._out[(link.peer, link.kind)]
            for listener in self._down_listeners:
                listener(link)

        task.add_done_callback(done)

    # -- inbound --------------------------------------------------------------------------------

    async def accept(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the ``{mesh_path}/link`` WebSocket endpoint (see the module docstring)."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k.startswith(b"x-siomesh-")
        }
        now = time.time()
        client = scope.get("client")
        try:
            if self._closing:
                raise HandshakeError("node is stopping")
            offer = self.secret.verify_offer(
                headers, recipient=self.node_url, now=now, window=self.window
            )
            if not self._nonces.fresh(offer.nonce, now):
                raise HandshakeError("link offer nonce reused (a replayed offer)")
        except HandshakeError as exc:
            self.stats.bump("links_refused")
            self.warn.warning(
                ("refuse", str(exc)[:40]),
                "refused a peer link from %s (claims %s): %s",
                client[0] if client else "?",
                headers.get("x-siomesh-node", "?"),
                exc,
            )
            await send({"type": "websocket.close", "code": 1008})
            return
        nonce = secrets.token_bytes(16)
        await send({"type": "websocket.accept"})
        try:
            await send(
                {
                    "type": "websocket.send",
                    "bytes": self.secret.hello(offer, nonce, self.generation),
                }
            )
            reply = await asyncio.wait_for(receive(), self.handshake_timeout)
            data = reply.get("bytes") if reply["type"] == "websocket.receive" else None
            if data is None:
                raise HandshakeError("no link ack")
            self.secret.verify_ack(offer, nonce, data)
        except (HandshakeError, asyncio.TimeoutError) as exc:
            self.stats.bump("links_refused")
            self.warn.warning(
                ("ack", offer.sender), "link from %s failed: %s", offer.sender, _reason(exc)
            )
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1008})
            return
        recv_key, send_key = self.secret.link_keys(offer, nonce)
        features = parse_features(headers.get(HEADER_FEATURES, ""))

        async def write(data: bytes) -> None:
            await send({"type": "websocket.send", "bytes": data})

        async def close(code: int) -> None:
            await send({"type": "websocket.close", "code": code})

        async def read() -> bytes | None:
            msg = await receive()
            if msg["type"] == "websocket.receive":
                data = msg.get("bytes")
                if data is None:
                    raise FrameError("text message on a link")
                return bytes(data)
            return None

        link = Link(
            peer=offer.sender,
            kind=offer.kind,
            dialler=False,
            peer_generation=offer.generation,
            features=features,
            announce=bool(features),
            send_key=send_key,
            recv_key=recv_key,
            write=write,
            close=close,
            dispatcher=self.dispatcher,
            max_buffer=self.max_buffer,
            stats=self.stats,
        )
        self.stats.bump("links_accepted")
        self._inbound.add(link)
        # the peer is evidently up: dial it again at once instead of after a backoff
        self.revive(offer.sender)
        try:
            await link.run(read)
        finally:
            self._inbound.discard(link)
            for listener in self._down_listeners:
                listener(link)

    # -- lifecycle and reporting ----------------------------------------------------------------

    async def close(self) -> None:
        """Close every link and the dialling client; idempotent."""
        self._closing = True
        for future in list(self._dialling.values()):
            future.cancel()
        links = [*self._out.values(), *self._inbound]
        await asyncio.gather(
            *(link.shutdown(reason="node stopping", cancel_handlers=True) for link in links),
            return_exceptions=True,
        )
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def pending_control(self) -> int:
        """Bytes still queued on this node's control links (and frames awaiting a dial)."""
        queued = sum(link.buffered for (_, kind), link in self._out.items() if kind == "control")
        return queued + sum(len(p) for (_, kind), p in self._pending.items() if kind == "control")

    def peer_links(self) -> list[dict[str, Any]]:
        """Every open link, for status."""
        links = [*self._out.values(), *self._inbound]
        return [link.info() for link in links if link.is_open]

    def open_links(self) -> int:
        return sum(1 for link in [*self._out.values(), *self._inbound] if link.is_open)
