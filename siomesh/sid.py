"""The self-routing sid: who owns a session is written inside its id.

Layout (21 bytes, 28 characters of unpadded base64url, the alphabet python-engineio uses)::

    node tag (3 bytes) | generation tag (3 bytes) | random (12 bytes) | mac (3 bytes)

* node tag: a keyed hash of the owner's advertised URL, so every member computes every other
  member's tag from the membership list; no lookup is needed for a sid that is 1 ms old.
* generation tag: a keyed hash of the owner's process generation, so a sid minted by an owner that
  has since restarted is recognised as dead without a hop.
* random: 96 bits from the OS CSPRNG (the caller passes them in; this module stays pure).
* mac: HMAC-SHA256 over the first 18 bytes with the cluster secret, truncated. A client cannot
  mint a sid that steers a request to a chosen member (1 in 2**24 per try), and a sid made under
  another secret is rejected outright.

Everything here is a pure function of its arguments: thread-safe, no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

__all__ = [
    "SID_LENGTH",
    "SidKeys",
    "SidParts",
    "generation_tag",
    "make_sid",
    "node_tag",
    "parse_sid",
]

_TAG_BYTES = 3
_RANDOM_BYTES = 12
_MAC_BYTES = 3
_RAW_BYTES = 2 * _TAG_BYTES + _RANDOM_BYTES + _MAC_BYTES
SID_LENGTH = _RAW_BYTES * 4 // 3  # 28 characters
_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True, slots=True)
class SidKeys:
    """Keys derived once from the cluster secret (domain-separated so no key is reused)."""

    tag_key: bytes
    mac_key: bytes

    @classmethod
    def from_secret(cls, secret: str) -> SidKeys:
        root = secret.encode()
        return cls(
            tag_key=hmac.new(root, b"siomesh/sid-tag", hashlib.sha256).digest(),
            mac_key=hmac.new(root, b"siomesh/sid-mac", hashlib.sha256).digest(),
        )


@dataclass(frozen=True, slots=True)
class SidParts:
    """A parsed, MAC-verified sid."""

    node_tag: str
    generation_tag: str


def _tag(key: bytes, label: bytes, value: str) -> bytes:
    return hmac.new(key, label + value.encode(), hashlib.sha256).digest()[:_TAG_BYTES]


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


def node_tag(keys: SidKeys, node_url: str) -> str:
    """The 4-character tag of the member advertised at ``node_url`` (a normalized URL)."""
    return _encode(_tag(keys.tag_key, b"node:", node_url))


def generation_tag(keys: SidKeys, generation: int) -> str:
    """The 4-character tag of a process generation."""
    return _encode(_tag(keys.tag_key, b"gen:", str(generation)))


def make_sid(keys: SidKeys, node_url: str, generation: int, random_bytes: bytes) -> str:
    """Mint a sid owned by ``node_url`` at ``generation``; ``random_bytes`` must be 12 bytes
    from a CSPRNG (e.g. ``secrets.token_bytes(12)``)."""
    if len(random_bytes) != _RANDOM_BYTES:
        raise ValueError(f"random_bytes must be {_RANDOM_BYTES} bytes")
    body = (
        _tag(keys.tag_key, b"node:", node_url)
        + _tag(keys.tag_key, b"gen:", str(generation))
        + random_bytes
    )
    mac = hmac.new(keys.mac_key, body, hashlib.sha256).digest()[:_MAC_BYTES]
    return _encode(body + mac)


def parse_sid(keys: SidKeys, sid: str) -> SidParts | None:
    """Return the owner tags of a sid minted under ``keys``, or ``None`` for anything else:
    wrong length, characters outside base64url, or a MAC that does not verify. Never raises."""
    if len(sid) != SID_LENGTH or not _ALPHABET.issuperset(sid.encode("ascii", "replace")):
        return None
    try:
        raw = base64.urlsafe_b64decode(sid)
    except (binascii.Error, ValueError):
        return None
    body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    expected = hmac.new(keys.mac_key, body, hashlib.sha256).digest()[:_MAC_BYTES]
    if not hmac.compare_digest(mac, expected):
        return None
    return SidParts(
        node_tag=_encode(body[:_TAG_BYTES]),
        generation_tag=_encode(body[_TAG_BYTES : 2 * _TAG_BYTES]),
    )
