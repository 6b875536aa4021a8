"""Peer request signatures: what makes a request "from a member" rather than "from a client".

A peer request carries these headers (all lower-case on the wire)::

    x-siomesh-node       the sender's advertised URL
    x-siomesh-time       sender's clock, integer milliseconds since the epoch
    x-siomesh-client     (forwards only) the original client's "host:port"
    x-siomesh-body       (peer messages only) hex SHA-256 of the body; "" for forwards
    x-siomesh-signature  hex HMAC-SHA256 over all of the above plus method, path and query

The signature binds method, path, raw query, sender, time, client address and body digest, so
a captured request cannot be replayed against another path or outside ``window`` seconds, and a
client cannot claim to be forwarded. Pure functions of their arguments (``now`` is passed in):
thread-safe, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "HEADER_BODY",
    "HEADER_CLIENT",
    "HEADER_NODE",
    "HEADER_SIGNATURE",
    "HEADER_TIME",
    "MESH_HEADERS",
    "PeerSigner",
    "SignedClaim",
]

HEADER_NODE = "x-siomesh-node"
HEADER_TIME = "x-siomesh-time"
HEADER_CLIENT = "x-siomesh-client"
HEADER_BODY = "x-siomesh-body"
HEADER_SIGNATURE = "x-siomesh-signature"
MESH_HEADERS = frozenset({HEADER_NODE, HEADER_TIME, HEADER_CLIENT, HEADER_BODY, HEADER_SIGNATURE})
_MESH_HEADERS_BYTES = frozenset(h.encode() for h in MESH_HEADERS)


@dataclass(frozen=True, slots=True)
class SignedClaim:
    """What a verified peer request tells the receiver."""

    node_url: str
    client: str
    body_digest: str


class PeerSigner:
    """Signs and verifies peer requests with a key derived from the cluster secret."""

    __slots__ = ("_key", "window")

    def __init__(self, secret: str, *, window: float = 30.0) -> None:
        self._key = hmac.new(secret.encode(), b"siomesh/peer-request", hashlib.sha256).digest()
        self.window = window

    def _mac(
        self,
        method: str,
        path: str,
        query: str,
        node_url: str,
        time_ms: str,
        client: str,
        body_digest: str,
    ) -> str:
        message = "\n".join((method.upper(), path, query, node_url, time_ms, client, body_digest))
        return hmac.new(self._key, message.encode("utf-8", "surrogateescape"), "sha256").hexdigest()

    def sign(
        self,
        *,
        method: str,
        path: str,
        query: str,
        node_url: str,
        now: float,
        client: str = "",
        body: bytes | None = None,
    ) -> dict[str, str]:
        """Headers to add to a peer request. ``body`` is given for peer messages (signed),
        ``None`` for forwarded client requests (the client's body is not ours to vouch for)."""
        time_ms = str(int(now * 1000))
        digest = hashlib.sha256(body).hexdigest() if body is not None else ""
        headers = {
            HEADER_NODE: node_url,
            HEADER_TIME: time_ms,
            HEADER_SIGNATURE: self._mac(method, path, query, node_url, time_ms, client, digest),
        }
        if client:
            headers[HEADER_CLIENT] = client
        if body is not None:
            headers[HEADER_BODY] = digest
        return headers

    def verify(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        now: float,
        body: bytes | None = None,
    ) -> SignedClaim | None:
        """Return the claim if the signature verifies, the time is within ``window`` and (when
        ``body`` is given) the body matches its signed digest; else ``None``. Never raises."""
        node_url = headers.get(HEADER_NODE)
        time_ms = headers.get(HEADER_TIME)
        signature = headers.get(HEADER_SIGNATURE)
        if not node_url or not time_ms or not signature:
            return None
        try:
            sent = int(time_ms) / 1000
        except ValueError:
            return None
        if abs(now - sent) > self.window:
            return None
        client = headers.get(HEADER_CLIENT, "")
        digest = headers.get(HEADER_BODY, "")
        expected = self._mac(method, path, query, node_url, time_ms, client, digest)
        if not hmac.compare_digest(expected, signature):
            return None
        if body is not None and not hmac.compare_digest(hashlib.sha256(body).hexdigest(), digest):
            return None
        return SignedClaim(node_url=node_url, client=client, body_digest=digest)


def mesh_headers_of(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The ``x-siomesh-*`` headers of an ASGI header list, decoded (latin-1, as HTTP is)."""
    return {
        k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers if k in _MESH_HEADERS_BYTES
    }


def without_mesh_headers(
    raw_headers: Iterable[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]:
    """An ASGI header list with every ``x-siomesh-*`` header removed."""
    return [(k, v) for k, v in raw_headers if k not in _MESH_HEADERS_BYTES]
