"""Typed calls over links: the one request/response primitive between nodes.

A call names an *operation* (``"session.takeover"``, ``"recovery.fetch"``, ``"node.drain"``,
``"adapter"``, ...) and carries a body; it is one ``CALL`` frame on the caller's control link,
answered by one ``REPLY`` frame on the same stream::

    CALL    u8 len(op) | op (ASCII) | body
    REPLY   u8 status  | body            status 0: ok (body: the answer); 1: refused (body: why)

The link authenticates the peer (it proved the cluster secret), so a handler knows who calls
(``link.peer``). Every call gets exactly one answer: an unknown operation, a handler that
refuses (:class:`CallRefused`) or raises, all answer status 1 at once
(:func:`siomesh.links.link.fallback_answer` covers a handler that dies before answering).

Delivery is at most once: a call is never resent; a caller that gets no answer in time
(:class:`asyncio.TimeoutError`) or loses the link (:class:`~siomesh.links.link.LinkClosed`)
does not know whether the handler ran. Operations that must not run twice dedupe themselves.
Use from the node's event loop only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .frames import FrameType
from .link import Link, Stream

if TYPE_CHECKING:
    from .pool import LinkPool

__all__ = ["CallFailed", "CallRefused", "Calls", "Handler", "decode_call", "encode_call"]

log = logging.getLogger("siomesh.links")

Handler = Callable[[Link, bytes], Awaitable[bytes]]

_OK = b"\x00"
_REFUSED = b"\x01"


class CallRefused(Exception):
    """Raised by a handler to answer status 1 with ``str(exc)`` as the reason."""


class CallFailed(Exception):
    """The peer answered the call with a refusal (its reason is the message)."""


def encode_call(op: str, body: bytes) -> bytes:
    name = op.encode("ascii")
    if not 0 < len(name) < 256:
        raise ValueError(f"operation name {op!r} must be 1 to 255 ASCII characters")
    return bytes((len(name),)) + name + body


def decode_call(payload: bytes) -> tuple[str, bytes]:
    """``(op, body)``; raises :class:`CallRefused` for a malformed call."""
    if not payload or len(payload) < 1 + payload[0]:
        raise CallRefused("malformed call")
    end = 1 + payload[0]
    try:
        op = payload[1:end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise CallRefused("malformed call") from exc
    return op, payload[end:]


class Calls:
    """The calls of one node: the operations it serves, and :meth:`call` to a peer. Created
    by the :class:`~siomesh.links.pool.LinkPool`, which serves ``CALL`` streams with it."""

    def __init__(self, pool: LinkPool) -> None:
        self._pool = pool
        self._handlers: dict[str, tuple[Handler, Callable[[Link, bytes], None] | None]] = {}

    def serve(
        self, op: str, handler: Handler, *, unsent: Callable[[Link, bytes], None] | None = None
    ) -> None:
        """Answer calls of ``op`` with ``await handler(link, body)`` (the reply's body), or
        status 1 when it raises :class:`CallRefused`. ``unsent(link, body)`` is told when an
        ok answer could not be queued (the link closed or is full): the handler ran but its
        caller will not learn it."""
        if op in self._handlers:
            raise ValueError(f"{op!r} is served already")
        self._handlers[op] = (handler, unsent)

    def serves(self, op: str) -> bool:
        return op in self._handlers

    async def call(self, peer: str, op: str, body: bytes = b"", *, timeout: float) -> bytes:
        """Call ``op`` on ``peer`` and return its answer's body.

        Raises :class:`~siomesh.links.pool.LinkUnavailable` (not sent),
        :class:`~siomesh.links.link.LinkClosed` or :class:`asyncio.TimeoutError` (sent, no
        answer: it may have run) or :class:`CallFailed` (the peer refused)."""
        from .pool import LinkUnavailable

        link = await self._pool.get(peer, "control")
        stream = link.open_stream()
        try:
            if not stream.send(FrameType.CALL, encode_call(op, body)):
                raise LinkUnavailable(f"{peer}: link closed or full, {op} not sent")
            kind, payload = await stream.next(timeout)
        finally:
            stream.close()
        if kind is not FrameType.REPLY or not payload:
            raise CallFailed(f"{peer}: unexpected {kind.name} answer to {op}")
        if payload[:1] != _OK:
            raise CallFailed(payload[1:].decode("utf-8", "replace") or f"{op} refused")
        return payload[1:]

    async def serve_stream(self, link: Link, stream: Stream, payload: bytes) -> None:
        """The link dispatcher's ``CALL`` handler."""
        unsent: Callable[[Link, bytes], None] | None = None
        body = b""
        try:
            op, body = decode_call(payload)
            served = self._handlers.get(op)
            if served is None:
                raise CallRefused(f"no {op!r} here")
            handler, unsent = served
            reply = _OK + await handler(link, body)
        except CallRefused as exc:
            reply = _REFUSED + str(exc).encode("utf-8", "replace")
            unsent = None
        if not stream.send(FrameType.REPLY, reply) and unsent is not None:
            unsent(link, body)
