"""A lean HTTP/1.1 client for the forwarding hot path: keep-alive pools per peer, httptools.

Forwarded polling requests are small, frequent and always go to a handful of peers, so a
general-purpose client's per-request machinery (cookie jars, redirects, tracing, timers) costs
more than the request. This one writes the request bytes itself and parses the answer with
httptools (the parser uvicorn uses), about half the client CPU of aiohttp per request.

Contract: :meth:`Http1Pool.request` returns the whole response or raises
:class:`Http1Error`; it is bounded by ``timeout`` (connect by ``connect_timeout``); a pooled
connection that turns out to be closed before any response byte arrived is replaced and the
request sent once more (the peer never saw it). Not thread-safe: one pool per event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field

import httptools

__all__ = ["Http1Error", "Http1Pool", "Http1Response"]

_IDLE_SECONDS = 4.0  # below uvicorn's 5 s keep-alive: never reuse a socket the peer is closing
_READ_SIZE = 65536


class Http1Error(Exception):
    """The request failed; ``sent`` tells whether the peer may have seen it."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass(slots=True)
class Http1Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(slots=True)
class _Parsed:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    complete: bool = False
    keep_alive: bool = False
    parser: httptools.HttpResponseParser | None = None

    # httptools callbacks
    def on_headers_complete(self) -> None:
        # asked here: once the message is complete the parser has reset its state
        assert self.parser is not None
        self.keep_alive = bool(self.parser.should_keep_alive())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Connection:
    __slots__ = ("reader", "used", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Http1Pool:
    """Keep-alive connections to several peers, at most ``max_idle`` idle ones per peer."""

    def __init__(self, *, connect_timeout: float, max_idle: int = 100) -> None:
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    async def _connect(self, host: str, port: int) -> _Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), self._connect_timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise Http1Error(f"connect to {host}:{port} failed: {exc!r}", sent=False) from exc
        return _Connection(reader, writer)

    def _take_idle(self, key: tuple[str, int]) -> _Connection | None:
        conns = self._idle.get(key)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if now - conn.used < _IDLE_SECONDS and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    def _give_back(self, key: tuple[str, int], conn: _Connection) -> None:
        conns = self._idle.setdefault(key, deque())
        if len(conns) >= self._max_idle:
            conn.close()
            return
        conn.used = time.monotonic()
        conns.append(conn)

    async def request(
        self,
        host: str,
        port: int,
        head: bytes,
        body: bytes,
        *,
        timeout: float,
    ) -> Http1Response:
        """Send ``head`` (request line and headers, ending in a blank line) and ``body``."""
        key = (host, port)
        try:
            return await asyncio.wait_for(self._request(key, head, body), timeout)
        except asyncio.TimeoutError as exc:
            raise Http1Error(f"{host}:{port}: no answer in {timeout} s", sent=True) from exc

    async def _request(self, key: tuple[str, int], head: bytes, body: bytes) -> Http1Response:
        conn = self._take_idle(key)
        if conn is not None:
            try:
                return await self._exchange(key, conn, head, body)
            except Http1Error as exc:
                if exc.sent:
                    raise
                # a pooled socket the peer had closed: the request was not seen, send again
        conn = await self._connect(*key)
        return await self._exchange(key, conn, head, body)

    async def _exchange(
        self, key: tuple[str, int], conn: _Connection, head: bytes, body: bytes
    ) -> Http1Response:
        parsed = _Parsed()
        parser = httptools.HttpResponseParser(parsed)
        parsed.parser = parser
        received = False
        try:
            conn.writer.write(head + body if len(body) < 16384 else head)
            if len(body) >= 16384:
                conn.writer.write(body)
            while not parsed.complete:
                data = await conn.reader.read(_READ_SIZE)
                if not data:
                    if not received:
                        raise Http1Error("connection closed before any answer", sent=False)
                    raise Http1Error("connection closed mid-answer", sent=True)
                received = True
                parser.feed_data(data)
        except Http1Error:
            conn.close()
            raise
        except (OSError, httptools.HttpParserError) as exc:
            conn.close()
            raise Http1Error(f"exchange failed: {exc!r}", sent=received) from exc
        except BaseException:
            conn.close()  # cancelled (timeout, client gone): the socket state is unknown
            raise
        parsed.parser = None
        if parsed.keep_alive:
            self._give_back(key, conn)
        else:
            conn.close()
        return Http1Response(parser.get_status_code(), parsed.headers, b"".join(parsed.body))
