"""The peer-link handshake: both ends prove they hold the cluster secret. PURE (no clock, no
randomness, no I/O: ``now`` and nonces are arguments).

Three messages, on one WebSocket connection to ``{mesh_path}/link``:

1. **Offer** (the dialler, as headers of the HTTP upgrade request; nothing else is read before
   it verifies): sender URL, recipient URL, link kind, sender generation, a fresh 16-byte
   nonce, the time, and an HMAC over all of them. The acceptor refuses, *before accepting the
   WebSocket* (so it buffers nothing), an offer whose MAC, time window (``window`` s) or
   recipient (must be the acceptor's own advertised URL) is wrong, or whose nonce it has seen.
2. **Hello** (the acceptor's first frame): its own fresh nonce, its generation, and an HMAC
   over the offer's fields and both nonces. It proves the acceptor holds the secret and is
   answering *this* offer (a replayed or forwarded offer cannot be answered by a third party).
3. **Ack** (the dialler's first frame): an HMAC over both nonces. It proves the dialler holds
   the secret now (a replayed offer cannot produce it).

Then each direction's frames are sealed with a key derived from the secret and everything
above (:func:`link_keys`): sender, recipient, kind and both nonces bind every frame to one link
incarnation. Erlang distribution's cookie challenge and TLS's key schedule are the models.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from dataclasses import dataclass

__all__ = [
    "FEATURE_BATCH",
    "FEATURE_BINARY_META",
    "HEADER_FEATURES",
    "HEADER_FROM",
    "HEADER_GENERATION",
    "HEADER_KIND",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIME",
    "HEADER_TO",
    "LINK_FEATURES",
    "LINK_KINDS",
    "NONCE_BYTES",
    "HandshakeError",
    "LinkSecret",
    "NonceCache",
    "Offer",
    "parse_features",
]

HEADER_FROM = "x-siomesh-node"
HEADER_TO = "x-siomesh-to"
HEADER_KIND = "x-siomesh-link"
HEADER_GENERATION = "x-siomesh-generation"
HEADER_NONCE = "x-siomesh-nonce"
HEADER_TIME = "x-siomesh-time"
HEADER_SIGNATURE = "x-siomesh-signature"
#: What the dialler reads beyond the first release's frames (comma-separated; unsigned: a
#: proxy that strips it only turns them off). The acceptor answers with a ``FEATURES`` frame
#: as its first frame, listing those it reads too: each side uses a feature only with a peer
#: that has it, so nodes of earlier releases (which ignore the header) still link.
HEADER_FEATURES = "x-siomesh-features"
#: several frames in one message (``BATCH``)
FEATURE_BATCH = "batch"
#: forwarded requests' and responses' meta in binary instead of JSON
FEATURE_BINARY_META = "meta2"
#: every feature this release has
LINK_FEATURES = frozenset({FEATURE_BATCH, FEATURE_BINARY_META})

#: ``control``: gossip, calls and their replies; ``data``: forwarded requests, relayed
#: WebSockets and adapter messages. Separate connections, so control never waits behind data.
LINK_KINDS = ("control", "data")
NONCE_BYTES = 16
_HELLO = struct.Struct(">16sQ32s")
_ACK_BYTES = 32


class HandshakeError(ValueError):
    """The other end failed the handshake; the message says which check failed."""


@dataclass(frozen=True, slots=True)
class Offer:
    """The dialler's offer, as carried by the upgrade request's headers."""

    sender: str
    recipient: str
    kind: str
    generation: int
    nonce: bytes
    time_ms: int

    def fields(self) -> bytes:
        return "\n".join(
            (
                self.sender,
                self.recipient,
                self.kind,
                str(self.generation),
                self.nonce.hex(),
                str(self.time_ms),
            )
        ).encode("utf-8", "surrogateescape")


class LinkSecret:
    """Keys derived from the cluster secret for the link handshake. Immutable, thread-safe."""

    __slots__ = ("_key",)

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode("utf-8") if isinstance(secret, str) else secret
        self._key = hmac.new(raw, b"siomesh/link/v1", hashlib.sha256).digest()

    def _mac(self, label: bytes, *parts: bytes) -> bytes:
        return hmac.new(self._key, label + b"\x00" + b"\x00".join(parts), "sha256").digest()

    # -- offer -------------------------------------------------------------------------------

    def offer_headers(self, offer: Offer) -> dict[str, str]:
        """The upgrade request's headers for ``offer``."""
        return {
            HEADER_FROM: offer.sender,
            HEADER_TO: offer.recipient,
            HEADER_KIND: offer.kind,
            HEADER_GENERATION: str(offer.generation),
            HEADER_NONCE: offer.nonce.hex(),
            HEADER_TIME: str(offer.time_ms),
            HEADER_SIGNATURE: self._mac(b"offer", offer.fields()).hex(),
        }

    def verify_offer(
        self, headers: dict[str, str], *, recipient: str, now: float, window: float
    ) -> Offer:
        """The verified offer in ``headers``, or :class:`HandshakeError` naming what failed.

        Does not check nonce reuse: the caller consults its :class:`NonceCache`.
        """
        try:
            offer = Offer(
                sender=headers[HEADER_FROM],
                recipient=headers[HEADER_TO],
                kind=headers[HEADER_KIND],
                generation=int(headers[HEADER_GENERATION]),
                nonce=bytes.fromhex(headers[HEADER_NONCE]),
                time_ms=int(headers[HEADER_TIME]),
            )
            signature = bytes.fromhex(headers[HEADER_SIGNATURE])
        except (KeyError, ValueError) as exc:
            raise HandshakeError("missing or malformed link offer headers") from exc
        if len(offer.nonce) != NONCE_BYTES or offer.kind not in LINK_KINDS:
            raise HandshakeError("malformed link offer")
        if not hmac.compare_digest(self._mac(b"offer", offer.fields()), signature):
            raise HandshakeError("link offer signature does not verify (different secret?)")
        if abs(now - offer.time_ms / 1000) > window:
            raise HandshakeError("link offer outside the time window (clock skew or replay)")
        if offer.recipient != recipient:
            raise HandshakeError(
                f"link offer is for {offer.recipient}, this node is {recipient} "
                "(node_url mismatch, or a replay to another node)"
            )
        if offer.sender == recipient:
            raise HandshakeError("link offer from this node's own URL (two processes, one URL?)")
        return offer

    # -- hello and ack -----------------------------------------------------------------------

    def hello(self, offer: Offer, nonce: bytes, generation: int) -> bytes:
        """The acceptor's first frame."""
        mac = self._mac(b"hello", offer.fields(), nonce, str(generation).encode())
        return _HELLO.pack(nonce, generation, mac)

    def verify_hello(self, offer: Offer, data: bytes) -> tuple[bytes, int]:
        """``(acceptor nonce, acceptor generation)`` from its hello, or :class:`HandshakeError`."""
        if len(data) != _HELLO.size:
            raise HandshakeError("malformed link hello")
        nonce, generation, mac = _HELLO.unpack(data)
        expected = self._mac(b"hello", offer.fields(), nonce, str(generation).encode())
        if not hmac.compare_digest(expected, mac):
            raise HandshakeError("link hello does not verify (different secret?)")
        return nonce, generation

    def ack(self, offer: Offer, nonce: bytes) -> bytes:
        """The dialler's first frame."""
        return self._mac(b"ack", offer.fields(), nonce)

    def verify_ack(self, offer: Offer, nonce: bytes, data: bytes) -> None:
        if len(data) != _ACK_BYTES or not hmac.compare_digest(self.ack(offer, nonce), data):
            raise HandshakeError("link ack does not verify")

    def link_keys(self, offer: Offer, nonce: bytes) -> tuple[bytes, bytes]:
        """``(dialler->acceptor key, acceptor->dialler key)`` of this link incarnation."""
        fields = offer.fields()
        return self._mac(b"key-d2a", fields, nonce), self._mac(b"key-a2d", fields, nonce)


class NonceCache:
    """Offer nonces seen within the time window: a replayed offer is refused.

    Bounded: at most ``capacity`` nonces (the oldest are forgotten first; an offer older than the
    window is refused by its timestamp anyway). Not thread-safe; pass ``now`` in.
    """

    __slots__ = ("_seen", "capacity", "window")

    def __init__(self, window: float, capacity: int = 65536) -> None:
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self.window = window
        self.capacity = capacity

    def fresh(self, nonce: bytes, now: float) -> bool:
        """True the first time ``nonce`` is seen in the window (and remember it)."""
        horizon = now - 2 * self.window
        while self._seen:
            oldest, seen_at = next(iter(self._seen.items()))
            if seen_at >= horizon and len(self._seen) < self.capacity:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True


def parse_features(value: str) -> frozenset[str]:
    """The features of this release named in a comma-separated ``value`` (others ignored)."""
    return frozenset(f.strip() for f in value.split(",")) & LINK_FEATURES
