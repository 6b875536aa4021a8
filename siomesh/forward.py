"""Forwarding of Engine.IO requests to the member that owns the session, over peer links.

Both ends live here:

* :class:`Forwarder` (the node the balancer picked): sends a client's polling request as one
  ``REQUEST`` frame on the data link to the owner and relays the ``RESPONSE``; relays a
  WebSocket as a stream of ``WS_*`` frames with per-stream credit.
* :class:`ForwardedServer` (the owner): rebuilds the client's ASGI scope from the frame and runs
  it through the wrapped app *in-process*: no second HTTP parse, no socket per request.

Delivery is **at most once**. A request is queued on the link exactly once and never resent. If
the link cannot be had (owner unreachable: nothing was sent), :class:`OwnerUnreachable` lets the
caller answer the client's 400 at once. If the link breaks, or the owner does not answer within
the bound, after the request was queued, :class:`OwnerLost` is raised: the owner may have
consumed it, so the caller answers an error the Engine.IO clients treat as a lost session (they
reconnect); a duplicate packet can never reach the app. When the link that carried a forwarded
request closes (or its forwarder's client leaves), the owner's pending long-poll returns at once
without taking packets (:mod:`siomesh.orphans`), so it cannot take packets nobody will read.

What is kept and changed on the way (python-engineio's quirks, see design.md): ``Host``,
``Origin``, cookies and every end-to-end header are kept; hop-by-hop headers are dropped (the
owner would read ``Upgrade`` as a WebSocket attempt); the client's address travels in the frame
and is appended to ``X-Forwarded-For``; response bytes come back untouched (a gzip body keeps
its ``Content-Encoding``). Every wait is bounded: a long-poll by the server's
``ping_interval + ping_timeout + poll_grace``, anything else by ``request_timeout``.

One :class:`Forwarder` and one :class:`ForwardedServer` per node, used from its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .counters import Stats
from .links.frames import (
    FrameError,
    FrameType,
    RequestMeta,
    ResponseMeta,
    decode_close,
    decode_data,
    decode_meta_body,
    decode_request,
    decode_response,
    encode_close,
    encode_data,
    encode_meta_body,
    encode_request,
    encode_response,
)
from .links.link import RELEASE, Link, LinkClosed, Stream, StreamInterrupted
from .links.pool import LinkPool, LinkUnavailable
from .orphans import ORPHANED

__all__ = [
    "FORWARDED_BY",
    "VIA_KEY",
    "BodyTooLarge",
    "ForwardedServer",
    "Forwarder",
    "OwnerLost",
    "OwnerUnreachable",
    "read_body",
]

log = logging.getLogger("siomesh.forward")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Scope key set on a request the owner received over a link: the forwarding member's URL.
FORWARDED_BY = "siomesh.forwarded_by"
#: Key of the ``http.disconnect`` message of a forwarded request whose forwarder released it
#: (it drains) but still reads the answer.
RELEASED_KEY = "siomesh.released"
#: Scope key set on a relayed WebSocket: why the member it landed on relays it.
RELAY_REASON_KEY = "siomesh.relay_reason"
#: The header that carries it over the link (the owner removes it; clients cannot send
#: ``x-siomesh-*`` headers, the middleware strips them).
RELAY_REASON = b"x-siomesh-relay-reason"
#: Scope key set on a polling request that a peer could not deliver to the session's owner
#: itself (no link to it: a partition between the two) and asks this node to forward once.
VIA_KEY = "siomesh.via"
#: The header that marks such a request on the link (removed by the receiving end).
VIA = b"x-siomesh-via-request"

# RFC 9110 section 7.6.1, plus framing headers the receiving server computes itself.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)
_WS_HANDSHAKE = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-accept",
        b"sec-websocket-protocol",
    }
)
_MESH_PREFIX = b"x-siomesh-"
_RESPONSE_SKIP = frozenset(_HOP_BY_HOP | {b"date", b"server"})


class OwnerUnreachable(Exception):
    """No link to the owner: the request was not sent, the client was not answered."""


class OwnerLost(Exception):
    """The request was sent but no answer came (link broke, or no answer in time); the owner
    may have acted on it, so it must not be resent. The client was not answered yet."""


class OwnerRefused(Exception):
    """The owner closed a relayed WebSocket before accepting it (unknown sid): ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(f"owner refused the WebSocket (code {code})")
        self.code = code


class BodyTooLarge(Exception):
    """The request body exceeds the configured limit."""


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    """Read a whole ASGI request body, refusing more than ``limit`` bytes (before reading it
    when the declared length already exceeds it). Raises :class:`BodyTooLarge`, or
    :class:`OwnerUnreachable` when the client disconnects first."""
    if declared is not None and declared > limit:
        raise BodyTooLarge(declared)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise OwnerUnreachable("client disconnected while sending its body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(size)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def forwarded_headers(
    raw: Iterable[tuple[bytes, bytes]], client_host: str, *, websocket: bool
) -> list[tuple[bytes, bytes]]:
    """Client headers as the owner sees them: hop-by-hop (and, for a WebSocket, handshake)
    headers dropped, ``x-siomesh-*`` dropped, the client appended to ``X-Forwarded-For``."""
    skip = _HOP_BY_HOP | _WS_HANDSHAKE if websocket else _HOP_BY_HOP
    connection_tokens: set[bytes] = set()
    out: list[tuple[bytes, bytes]] = []
    xff: bytes | None = None
    for name, value in raw:
        if name == b"connection":
            connection_tokens.update(t.strip().lower() for t in value.split(b","))
        if name in skip or name.startswith(_MESH_PREFIX):
            continue
        if name == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
            continue
        out.append((name, value))
    if connection_tokens:
        out = [(k, v) for k, v in out if k not in connection_tokens]
    if client_host:
        host = client_host.encode("latin-1")
        xff = host if xff is None else xff + b", " + host
    if xff is not None:
        out.append((b"x-forwarded-for", xff))
    return out


#: marker answer of a held poll released because this node is draining
_RELEASED: tuple[FrameType, bytes] = (FrameType.CANCEL, b"released")
#: why a held poll's wait ended: its client left
_LEFT = "left"


def _noop_allowed(scope: Scope) -> bool:
    """Whether a plain Engine.IO v4 NOOP answers this poll (not JSONP, not protocol 3)."""
    query = scope.get("query_string", b"")
    return b"EIO=4" in query and b"j=" not in query


async def _send_noop(send: Send) -> None:
    body = b"6"  # Engine.IO NOOP: the client simply polls again
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain; charset=UTF-8"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _empty_answer(payload: bytes) -> bool:
    """Whether a RESPONSE frame is a 200 with an empty body (a poll that took no packets)."""
    try:
        response, body = decode_response(payload)
        return not body and response.status == 200
    except FrameError:
        return False


def _client_host(scope: Scope) -> str:
    if FORWARDED_BY in scope:
        return ""  # forwarded once already: the client is in X-Forwarded-For
    client = scope.get("client")
    return str(client[0]) if client else ""


class Forwarder:
    """The forwarding end (see the module docstring)."""

    def __init__(
        self,
        pool: LinkPool,
        *,
        release: asyncio.Event,
        poll_timeout: float,
        request_timeout: float,
        stats: Stats,
    ) -> None:
        self._pool = pool
        self._release = release
        self._poll_timeout = poll_timeout
        self._request_timeout = request_timeout
        self.stats = stats
        self._held: set[Stream] = set()
        self._release_watch: asyncio.Future[None] | None = None

    async def _link(self, target: str) -> Link:
        # Forwarding targets are live members (routing checked): a backoff after an earlier
        # failed dial must not fail this request (after a heal the owner is back, and a 400
        # here would leave its client waiting for a long-poll held there); one dial, shared.
        try:
            return await self._pool.get(target, "data", retry_now=True)
        except LinkUnavailable as exc:
            raise OwnerUnreachable(str(exc)) from exc

    async def forward_http(
        self,
        scope: Scope,
        body: bytes,
        receive: Receive,
        send: Send,
        target: str,
        *,
        via: bool = False,
    ) -> bool:
        """Send one polling request to ``target`` and relay its answer to the client.

        With ``via``, ``target`` is not the owner but a member asked to forward the request to
        the owner once (this node cannot reach the owner; see :data:`VIA_KEY`).

        Returns False when the client left before the answer (the owner was told to stop).
        Raises :class:`OwnerUnreachable` (not sent) or :class:`OwnerLost` (sent, no answer).
        """
        link = await self._link(target)
        headers = forwarded_headers(scope["headers"], _client_host(scope), websocket=False)
        if via:
            headers.append((VIA, b"1"))  # last: the owner looks only there
        meta = RequestMeta.from_scope(scope, headers)
        stream = link.open_stream()
        try:
            payload = encode_request(meta, body, binary=link.binary_meta)
            if not stream.send(FrameType.REQUEST, payload):
                raise OwnerUnreachable(f"{target}: link closed or full, request not sent")
            try:
                if scope.get("method") == "GET" and b"sid=" in scope.get("query_string", b""):
                    # a long-poll: held up to ping_interval + ping_timeout by the owner
                    answer = await self._held_answer(stream, receive)
                    if answer is None:
                        stream.send(FrameType.CANCEL, b"")
                        self.stats.bump("forward_cancelled")
                        return False
                    if answer is _RELEASED:
                        # This node is draining: the owner ends its poll now and answers
                        # whatever it already took (nothing, if its poll was still waiting:
                        # the packets stay queued there). That answer is still read and
                        # relayed, so no packet is lost; an empty one becomes a NOOP and the
                        # client polls again, on another node.
                        stream.send(FrameType.CANCEL, RELEASE)
                        self.stats.bump("polls_released")
                        answer = await stream.next(self._request_timeout)
                        if answer[0] is FrameType.RESPONSE and _empty_answer(answer[1]):
                            if not _noop_allowed(scope):
                                raise OwnerLost(f"{target}: released while draining")
                            await _send_noop(send)
                            return True
                    kind, payload = answer
                else:
                    # a POST or a handshake: answered at once, no need to watch the client
                    kind, payload = await stream.next(self._request_timeout)
            except (LinkClosed, asyncio.TimeoutError) as exc:
                if isinstance(exc, asyncio.TimeoutError):
                    stream.send(FrameType.CANCEL, b"")
                self.stats.bump("forward_lost")
                raise OwnerLost(f"{target}: {exc!r}") from exc
            if kind is not FrameType.RESPONSE:
                raise OwnerLost(f"{target}: unexpected {kind.name} frame")
            try:
                response, response_body = decode_response(payload)
            except FrameError as exc:
                raise OwnerLost(f"{target}: bad response: {exc}") from exc
        finally:
            stream.close()
        headers = [(k, v) for k, v in response.headers if k not in _RESPONSE_SKIP]
        headers.append((b"content-length", b"%d" % len(response_body)))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response_body})
        return True

    async def _held_answer(
        self, stream: Stream, receive: Receive
    ) -> tuple[FrameType, bytes] | None:
        """A long-poll's answer; None when the client left first (it can be held up to
        ``ping_interval + ping_timeout``, so the client's departure is watched); ``_RELEASED``
        when this node started draining first.

        One task per held poll (the client's ``receive``); the answer is awaited here and the
        drain's release reaches every held stream from one watcher (:meth:`_watch_release`):
        a forwarded long-poll is the hop's most frequent request.
        """
        # The body is read: the only message receive() can still give is a disconnect.
        left = asyncio.ensure_future(receive())
        waiting = True

        def client_left(task: asyncio.Future[Message]) -> None:
            if not waiting:  # ran after the wait ended (scheduled before it was removed)
                return
            released = (
                not task.cancelled()
                and task.exception() is None
                and bool(task.result().get(RELEASED_KEY))
            )
            # a request forwarded to us whose forwarder released it (it drains): release it
            # here too, and relay the owner's answer back
            stream.interrupt(_RELEASED if released else _LEFT)

        left.add_done_callback(client_left)
        self._held.add(stream)
        if self._release.is_set():
            stream.interrupt(_RELEASED)
        elif self._release_watch is None:
            self._release_watch = asyncio.ensure_future(self._watch_release())
        try:
            return await stream.next(self._poll_timeout)
        except StreamInterrupted as exc:
            return _RELEASED if exc.args[0] is _RELEASED else None
        finally:
            waiting = False
            self._held.discard(stream)
            left.remove_done_callback(client_left)
            if not left.done():
                left.cancel()

    async def _watch_release(self) -> None:
        """Release every held long-poll when this node starts draining (and later ones at
        once: :meth:`_held_answer` checks)."""
        await self._release.wait()
        for stream in list(self._held):
            stream.interrupt(_RELEASED)

    async def forward_websocket(
        self, scope: Scope, receive: Receive, send: Send, target: str, reason: str = ""
    ) -> None:
        """Relay a WebSocket to ``target`` (its ``websocket.connect`` already consumed);
        ``reason`` (why it is relayed, not served here) travels with it, for the owner's
        :meth:`MeshNode.journey <siomesh.node.MeshNode.journey>`.

        Raises :class:`OwnerUnreachable` or :class:`OwnerRefused` before the client is
        accepted; once accepted, returns when either side closes.
        """
        link = await self._link(target)
        headers = forwarded_headers(scope["headers"], _client_host(scope), websocket=True)
        if reason:
            headers.append((RELAY_REASON, reason.encode("utf-8", "replace")[:200]))
        meta = RequestMeta.from_scope(scope, headers)
        stream = link.open_stream()
        try:
            if not stream.send(FrameType.WS_OPEN, encode_request(meta, binary=link.binary_meta)):
                raise OwnerUnreachable(f"{target}: link closed or full")
            try:
                kind, payload = await stream.next(self._request_timeout)
                if kind is FrameType.WS_CLOSE:
                    raise OwnerRefused(decode_close(payload)[0])
                if kind is not FrameType.WS_ACCEPT:
                    raise FrameError(f"unexpected {kind.name} frame")
                accept_meta, _ = decode_meta_body(payload)
            except (LinkClosed, asyncio.TimeoutError, FrameError) as exc:
                # tell the owner to give up on it, should it accept later
                stream.send(FrameType.WS_CLOSE, encode_close(1001))
                raise OwnerUnreachable(f"{target}: no answer to the WebSocket: {exc!r}") from exc
            subprotocol = accept_meta.get("sp") if isinstance(accept_meta, dict) else None
            await send({"type": "websocket.accept", "subprotocol": subprotocol})
            self.stats.bump("relayed_websockets")
            try:
                await _relay(stream, receive, send, self._poll_timeout)
            finally:
                self.stats.bump("relayed_websockets", -1)
        finally:
            stream.close()


async def _relay(stream: Stream, receive: Receive, send: Send, idle: float) -> None:
    """Pump a relayed WebSocket both ways until either side closes."""

    async def client_to_owner() -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                await stream.send_data(FrameType.WS_DATA, encode_data(data), idle)
            elif kind == "websocket.disconnect":
                stream.send(FrameType.WS_CLOSE, encode_close(int(message.get("code", 1000))))
                return

    async def owner_to_client() -> None:
        code = 1011
        try:
            while True:
                kind, payload = await stream.next()
                if kind is FrameType.WS_DATA:
                    data = decode_data(payload)
                    if isinstance(data, str):
                        await send({"type": "websocket.send", "text": data})
                    else:
                        await send({"type": "websocket.send", "bytes": data})
                    stream.consumed_bytes(len(payload))
                elif kind is FrameType.WS_CLOSE:
                    code = decode_close(payload)[0]
                    break
        except LinkClosed:
            code = 1012  # service restart: the owner's link went away
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code})

    tasks = [asyncio.ensure_future(client_to_owner()), asyncio.ensure_future(owner_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class ForwardedServer:
    """The owner's end: runs forwarded requests and relayed WebSockets through ``app``.

    ``app`` is the wrapped ASGI app (the request is served here, never forwarded again); the
    scope carries :data:`FORWARDED_BY` and the client address the forwarder saw. Register
    :meth:`serve_request` and :meth:`serve_websocket` with the link pool's dispatcher.
    """

    def __init__(
        self,
        app: App,
        *,
        send_timeout: float,
        stats: Stats,
        on_lost: Callable[[Scope], Awaitable[None]],
    ) -> None:
        self._app = app
        self._on_lost = on_lost
        self._send_timeout = send_timeout
        self.stats = stats

    async def serve_request(self, link: Link, stream: Stream, payload: bytes) -> None:
        request, body = decode_request(payload)
        scope = request.scope("http")
        scope[FORWARDED_BY] = link.peer
        headers = scope["headers"]
        if headers and headers[-1][0] == VIA:  # the forwarder puts it last: no scan per request
            scope[VIA_KEY] = True
            del headers[-1]
        if body or scope["method"] == "POST":
            # python-engineio reads exactly Content-Length bytes (none without it): the body
            # arrived whole, so its length is known; the client's own header was dropped.
            scope["headers"].append((b"content-length", b"%d" % len(body)))
        self.stats.bump("forwarded_in")
        binary = link.binary_meta
        delivered = False
        start: Message | None = None
        chunks: list[bytes] = []

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await stream.ended.wait()  # the forwarder cancelled, or the link closed
            if stream.released:
                # the forwarder still reads the answer: a re-forward must relay one
                return {"type": "http.disconnect", RELEASED_KEY: True}
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False) and start is not None:
                    response = ResponseMeta(
                        status=int(start["status"]), headers=list(start.get("headers", []))
                    )
                    answer = encode_response(response, b"".join(chunks), binary=binary)
                    stream.send(FrameType.RESPONSE, answer)

        if scope["method"] != "GET":  # only a GET can be a long-poll that gets orphaned
            await self._app(scope, receive, send)
        else:
            token = ORPHANED.set(stream.end_signal)
            try:
                await self._app(scope, receive, send)
            finally:
                ORPHANED.reset(token)
        if (
            stream.failed
            and not stream.released
            and start is not None
            and int(start["status"]) == 200
            and any(chunks)
        ):
            # Answered in the instant the forwarder went away: the packets in this answer
            # reached nobody. Say so, and let the session's client learn it.
            self.stats.bump("forward_answers_lost")
            await self._on_lost(scope)

    async def serve_websocket(self, link: Link, stream: Stream, payload: bytes) -> None:
        scope = decode_request(payload)[0].scope("websocket")
        scope[FORWARDED_BY] = link.peer
        for name, value in scope["headers"]:
            if name == RELAY_REASON:
                scope[RELAY_REASON_KEY] = value.decode("utf-8", "replace")
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != RELAY_REASON]
        # python-engineio recognises an upgrade by these two headers, which are hop-by-hop
        # and so were not forwarded: a WebSocket scope always had them.
        scope["headers"] += [(b"connection", b"Upgrade"), (b"upgrade", b"websocket")]
        self.stats.bump("relayed_in")
        connected = False
        accepted = False
        closed = False

        async def receive() -> Message:
            nonlocal connected
            if not connected:
                connected = True
                return {"type": "websocket.connect"}
            try:
                kind, data = await stream.next()
            except LinkClosed:
                return {"type": "websocket.disconnect", "code": 1006}
            while kind is not FrameType.WS_DATA and kind is not FrameType.WS_CLOSE:
                kind, data = await stream.next()
            if kind is FrameType.WS_CLOSE:
                return {"type": "websocket.disconnect", "code": decode_close(data)[0]}
            stream.consumed_bytes(len(data))
            value = decode_data(data)
            if isinstance(value, str):
                return {"type": "websocket.receive", "text": value}
            return {"type": "websocket.receive", "bytes": value}

        async def send(message: Message) -> None:
            nonlocal accepted, closed
            kind = message["type"]
            if closed:
                return
            if kind == "websocket.accept":
                accepted = True
                stream.send(
                    FrameType.WS_ACCEPT, encode_meta_body({"sp": message.get("subprotocol")})
                )
            elif kind == "websocket.send":
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                await stream.send_data(FrameType.WS_DATA, encode_data(data), self._send_timeout)
            elif kind == "websocket.close":
                closed = True
                stream.send(FrameType.WS_CLOSE, encode_close(int(message.get("code", 1000))))

        try:
            await self._app(scope, receive, send)
        finally:
            if not closed:
                stream.send(FrameType.WS_CLOSE, encode_close(1000 if accepted else 1008))
