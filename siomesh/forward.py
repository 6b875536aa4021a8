"""Forwarding of Engine.IO requests to the member that owns the session.

Polling requests are replayed over a keep-alive aiohttp pool (one pool per peer, bounded by
``pool_size``): the body is buffered with a size limit and sent with ``Content-Length`` (the owner
drops a chunked POST silently), hop-by-hop headers are stripped (the owner would read ``Upgrade``
as a WebSocket attempt), ``Host``, ``Origin``, ``Cookie`` and the rest are kept, the client's
address is appended to ``X-Forwarded-For`` and signed, and the response bytes come back untouched
(``auto_decompress=False``: a gzip body keeps its ``Content-Encoding``).

A polling-to-WebSocket upgrade is proxied as a real WebSocket: the owner is dialled first, and
only if it accepts is the client accepted, with the same subprotocol; then frames are pumped in
both directions as they are (text stays text, binary stays binary) and close codes are passed on.

Every wait is bounded: connect by ``connect_timeout``, a long-poll by the server's
``ping_interval + ping_timeout + poll_grace`` (the owner always answers first), anything else by
``request_timeout``. When the owner cannot be reached, :class:`OwnerUnreachable` is raised before
anything was sent to the client, so the caller can answer the client's 400 at once.

Concurrency: one :class:`Forwarder` per node, used from its event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp

from .auth import PeerSigner, without_mesh_headers
from .http1 import Http1Error, Http1Pool

__all__ = ["BodyTooLarge", "Forwarder", "OwnerUnreachable", "read_body"]

log = logging.getLogger("siomesh.forward")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# RFC 9110 section 7.6.1, plus the headers aiohttp must compute itself.
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
_RESPONSE_SKIP = frozenset(_HOP_BY_HOP - {b"content-length"}) | {b"date", b"server"}
_RESPONSE_SKIP_WITH_LENGTH = _RESPONSE_SKIP | {b"content-length"}
_RETRYABLE = (aiohttp.ServerDisconnectedError,)


@functools.lru_cache(maxsize=256)
def _plain_http_address(url: str) -> tuple[str, int] | None:
    """(host, port) of an ``http://`` peer URL; ``None`` for https (aiohttp does TLS)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return None
    return parts.hostname, parts.port or 80


_WS_END = frozenset({aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR})


class OwnerUnreachable(Exception):
    """The owner could not be reached or failed before any response reached the client."""


class BodyTooLarge(Exception):
    """The request body exceeds the configured limit."""


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    """Read a whole ASGI request body, refusing more than ``limit`` bytes."""
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


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return ""
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _request_headers(
    raw: Iterable[tuple[bytes, bytes]], client_host: str, *, websocket: bool
) -> list[tuple[str, str]]:
    """Client headers as they go to the owner: hop-by-hop (and, for a WebSocket, handshake)
    headers dropped, ``x-siomesh-*`` dropped, the client appended to ``X-Forwarded-For``."""
    skip = _HOP_BY_HOP | _WS_HANDSHAKE if websocket else _HOP_BY_HOP
    connection_tokens: set[bytes] = set()
    out: list[tuple[str, str]] = []
    xff: str | None = None
    for name, value in without_mesh_headers(raw):
        if name == b"connection":
            connection_tokens.update(t.strip().lower() for t in value.split(b","))
        if name in skip:
            continue
        if name == b"x-forwarded-for":
            xff = value.decode("latin-1") if xff is None else f"{xff}, {value.decode('latin-1')}"
            continue
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    if connection_tokens:
        out = [(k, v) for k, v in out if k.encode("latin-1") not in connection_tokens]
    if client_host:
        xff = client_host if xff is None else f"{xff}, {client_host}"
    if xff is not None:
        out.append(("X-Forwarded-For", xff))
    return out


class Forwarder:
    """Forwards Engine.IO requests to peers. :meth:`start` and :meth:`close` bracket its use."""

    def __init__(
        self,
        *,
        node_url: str,
        signer: PeerSigner,
        connect_timeout: float,
        poll_timeout: float,
        request_timeout: float,
        pool_size: int,
        max_ws_message: int,
    ) -> None:
        self._node_url = node_url
        self._signer = signer
        self._connect_timeout = connect_timeout
        self._poll_timeout = poll_timeout
        self._request_timeout = request_timeout
        self._pool_size = pool_size
        self._max_ws_message = max_ws_message
        self._session: aiohttp.ClientSession | None = None
        #: the lean keep-alive client used for plain-HTTP polling forwards
        self.http1 = Http1Pool(connect_timeout=connect_timeout, max_idle=pool_size)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared keep-alive client session (also used for peer messages)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0,
                limit_per_host=self._pool_size,
                # below uvicorn's 5 s keep-alive so we never reuse a socket the peer is closing
                keepalive_timeout=4.0,
                enable_cleanup_closed=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # every call passes its own bound; this default bounds anything that does not
                timeout=aiohttp.ClientTimeout(
                    total=self._request_timeout, sock_connect=self._connect_timeout
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        self.http1.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _signed(self, method: str, scope: Scope) -> dict[str, str]:
        return self._signer.sign(
            method=method,
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            node_url=self._node_url,
            now=time.time(),
            client=_client_address(scope),
        )

    @staticmethod
    def _target(base: str, scope: Scope, websocket: bool) -> str:
        query = scope.get("query_string", b"").decode("latin-1")
        url = base + scope["path"]
        if websocket:
            url = "ws" + url[4:] if url.startswith("http") else url
        return f"{url}?{query}" if query else url

    async def forward_http(
        self, scope: Scope, body: bytes, send: Send, target: str, *, long_poll: bool
    ) -> None:
        """Replay one polling request on ``target`` and relay its response.

        Raises :class:`OwnerUnreachable` when no response could be obtained; nothing has been
        sent to the client then.
        """
        method = scope["method"]
        client = scope.get("client")
        headers = _request_headers(
            scope["headers"], str(client[0]) if client else "", websocket=False
        )
        headers.extend(self._signed(method, scope).items())
        address = _plain_http_address(target)
        if address is not None:
            await self._forward_http1(scope, method, headers, body, send, address, long_poll)
            return
        timeout = aiohttp.ClientTimeout(
            total=self._poll_timeout if long_poll else self._request_timeout,
            sock_connect=self._connect_timeout,
        )
        url = self._target(target, scope, websocket=False)
        for attempt in (1, 2):
            try:
                async with self.session.request(
                    method,
                    url,
                    headers=headers,
                    data=body if body or method == "POST" else None,
                    timeout=timeout,
                    allow_redirects=False,
                ) as response:
                    payload = await response.read()
                    status = response.status
                    out_headers = [
                        (k.lower(), v)
                        for k, v in response.raw_headers
                        if k.lower() not in _RESPONSE_SKIP
                    ]
                break
            except _RETRYABLE as exc:
                # A keep-alive socket the peer closed as we reused it: the request was not
                # processed, so one retry on a fresh connection is safe.
                if attempt == 2:
                    raise OwnerUnreachable(f"{target}: {exc!r}") from exc
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                raise OwnerUnreachable(f"{target}: {exc!r}") from exc
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": payload})

    async def _forward_http1(
        self,
        scope: Scope,
        method: str,
        headers: list[tuple[str, str]],
        body: bytes,
        send: Send,
        address: tuple[str, int],
        long_poll: bool,
    ) -> None:
        """The hot path: plain-HTTP peers go through the lean keep-alive client."""
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        lines = [method.encode(), b" ", raw_path]
        if query:
            lines += [b"?", query]
        lines.append(b" HTTP/1.1\r\n")
        has_host = False
        for name, value in headers:
            if name == "host":
                has_host = True
            lines += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        if not has_host:
            lines.append(f"host: {address[0]}:{address[1]}\r\n".encode())
        if body or method == "POST":
            lines.append(b"content-length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        try:
            response = await self.http1.request(
                address[0],
                address[1],
                b"".join(lines),
                body,
                timeout=self._poll_timeout if long_poll else self._request_timeout,
            )
        except Http1Error as exc:
            raise OwnerUnreachable(f"{address}: {exc}") from exc
        out_headers = [(k, v) for k, v in response.headers if k not in _RESPONSE_SKIP_WITH_LENGTH]
        out_headers.append((b"content-length", str(len(response.body)).encode()))
        await send(
            {"type": "http.response.start", "status": response.status, "headers": out_headers}
        )
        await send({"type": "http.response.body", "body": response.body})

    async def forward_websocket(
        self, scope: Scope, receive: Receive, send: Send, target: str
    ) -> None:
        """Proxy a WebSocket (the ``websocket.connect`` message is already consumed).

        Raises :class:`OwnerUnreachable` when the owner refuses or cannot be reached; the
        client has not been accepted then.
        """
        client = scope.get("client")
        headers = _request_headers(
            scope["headers"], str(client[0]) if client else "", websocket=True
        )
        headers.extend(self._signed("GET", scope).items())
        try:
            # the handshake is bounded as a whole: connect plus the owner's answer
            upstream = await asyncio.wait_for(
                self._ws_connect(scope, headers, target), timeout=self._request_timeout
            )
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise OwnerUnreachable(f"{target}: {exc!r}") from exc
        await send({"type": "websocket.accept", "subprotocol": upstream.protocol})
        await _pump(receive, send, upstream)

    async def _ws_connect(
        self, scope: Scope, headers: list[tuple[str, str]], target: str
    ) -> aiohttp.ClientWebSocketResponse:
        return await self.session.ws_connect(
            self._target(target, scope, websocket=True),
            headers=headers,
            protocols=tuple(scope.get("subprotocols") or ()),
            timeout=aiohttp.ClientWSTimeout(ws_close=self._connect_timeout * 5),
            autoclose=False,
            autoping=True,
            max_msg_size=self._max_ws_message,
            compress=0,
        )


async def _pump(receive: Receive, send: Send, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Relay frames both ways until either side closes; the other side is then closed too."""

    async def client_to_owner() -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                if message.get("text") is not None:
                    await upstream.send_str(message["text"])
                elif message.get("bytes") is not None:
                    await upstream.send_bytes(message["bytes"])
            elif kind == "websocket.disconnect":
                code = message.get("code", 1000)
                await upstream.close(code=code if 1000 <= code < 5000 else 1000)
                return

    async def owner_to_client() -> None:
        async for frame in upstream:
            if frame.type == aiohttp.WSMsgType.TEXT:
                await send({"type": "websocket.send", "text": frame.data})
            elif frame.type == aiohttp.WSMsgType.BINARY:
                await send({"type": "websocket.send", "bytes": frame.data})
            elif frame.type in _WS_END:
                break
        code = upstream.close_code or 1000
        if not upstream.closed:
            await upstream.close()
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code})

    tasks = [asyncio.ensure_future(client_to_owner()), asyncio.ensure_future(owner_to_client())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not upstream.closed:
            with contextlib.suppress(Exception):
                await upstream.close()
    for task in done:
        exc = task.exception()
        if exc is not None and not isinstance(exc, (ConnectionError, aiohttp.ClientError)):
            log.debug("websocket relay ended: %r", exc)
