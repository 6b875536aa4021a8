"""The peer-link wire format. PURE: no asyncio, no clock, no randomness, no I/O.

A link carries binary WebSocket messages; each message is one *frame*::

    type (u8) | stream (u32) | seq (u64) | payload | mac (16 bytes)

or one ``BATCH`` frame (type 1, stream 0) whose payload is several frames without their own
``seq`` and ``mac``, each ``type (u8) | stream (u32) | length (u32) | payload``: the writer sends
what was queued in one event-loop turn as one message, sealed once (one MAC, one WebSocket
message, one wake-up of the reader instead of one each). The inner frames are covered by the
batch's MAC and sequence number, so a batch is replay- and forgery-proof as a whole; an inner
frame may not itself be a batch. A node sends batches only to a peer that said it reads them
(:data:`~siomesh.links.handshake.HEADER_FEATURES` and the ``FEATURES`` frame), so nodes of
releases without them still link.

* ``seq`` counts the frames one side has sent on this link, from 1, with no gaps. The receiver
  accepts only the next number it expects, so a frame replayed on the same link (later, or
  twice) is refused.
* ``mac`` is HMAC-SHA256, truncated to 16 bytes, over everything before it, keyed with the
  sending direction's key of this link incarnation (:mod:`siomesh.links.handshake` derives it
  from the cluster secret, both ends' URLs and both ends' fresh nonces). A frame captured on one
  link does not verify on another link, to another node, or in the other direction.
* ``stream`` names the exchange a frame belongs to (a forwarded request and its answer, a relayed
  WebSocket, a call and its reply); 0 for frames outside any exchange (gossip, adapter messages).
  Streams are opened only by the side that dialled the link.

Payloads: the request/response/WebSocket-open *meta* parts are compact JSON (header names and
values as latin-1 strings, as HTTP defines them), or, between nodes that both read it (feature
``meta2``), length-prefixed binary fields (:func:`encode_request`, :func:`encode_response`; the
decoders read either form), followed by raw body bytes; everything else is fixed binary fields.
:class:`FrameError` is raised for anything malformed; the link closes with a protocol error then
(never a 500).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HEADER",
    "MAC_BYTES",
    "FrameError",
    "FrameType",
    "RequestMeta",
    "ResponseMeta",
    "decode_batch",
    "decode_close",
    "decode_data",
    "decode_meta_body",
    "decode_request",
    "decode_response",
    "decode_u32",
    "decode_u64_pair",
    "encode_batch",
    "encode_close",
    "encode_data",
    "encode_meta_body",
    "encode_request",
    "encode_response",
    "encode_u32",
    "encode_u64_pair",
    "open_frame",
    "seal_frame",
]

HEADER = struct.Struct(">BIQ")
MAC_BYTES = 16
_U32 = struct.Struct(">I")
_U64_PAIR = struct.Struct(">QQ")
_CLOSE = struct.Struct(">H")
_MIN_FRAME = HEADER.size + MAC_BYTES
#: one frame inside a ``BATCH``: type, stream, payload length
INNER = struct.Struct(">BII")


class FrameError(ValueError):
    """A frame that does not decode, verify or arrive in order: a protocol error."""


class FrameType(enum.IntEnum):
    #: either way: several frames in one message (see the module docstring); stream 0
    BATCH = 1
    #: acceptor -> dialler, its first frame: the features both ends read (comma-separated)
    FEATURES = 2
    #: dialler -> acceptor: a forwarded HTTP request (meta + body), to be answered once
    REQUEST = 10
    #: acceptor -> dialler: the answer to a REQUEST (meta + body)
    RESPONSE = 11
    #: dialler -> acceptor: the request's client went away; stop working on it
    CANCEL = 12
    #: dialler -> acceptor: a relayed WebSocket's handshake (meta)
    WS_OPEN = 20
    #: acceptor -> dialler: the owner accepted the WebSocket (meta: subprotocol, headers)
    WS_ACCEPT = 21
    #: either way: one WebSocket message (flag byte: 0 text, 1 binary; then the data)
    WS_DATA = 22
    #: either way: the WebSocket closed (u16 code, then the reason)
    WS_CLOSE = 23
    #: either way: the receiver has consumed this many bytes of the stream (u32): more credit
    WINDOW = 24
    #: either way: one gossip protocol message
    GOSSIP = 30
    #: either way: one adapter message (u64 epoch, u64 seq, then its JSON)
    ADAPTER = 40
    #: either way: the adapter messages up to (epoch, seq) were applied (cumulative)
    ADAPTER_ACK = 41
    #: either way: adapter messages (epoch, first seq .. last seq) were dropped (JSON detail)
    ADAPTER_GAP = 42
    #: dialler -> acceptor: a cluster-wide call (JSON), answered by one REPLY
    CALL = 50
    #: acceptor -> dialler: the answer to a CALL (status byte 0 ok / 1 error, then JSON)
    REPLY = 51


_KNOWN_TYPES = frozenset(int(t) for t in FrameType)


@functools.lru_cache(maxsize=256)
def _keyed(key: bytes) -> hmac.HMAC:
    """HMAC-SHA256 with ``key`` already absorbed: a copy per frame skips the key schedule
    (about a third of a small frame's MAC time). One per link direction in use."""
    return hmac.new(key, digestmod=hashlib.sha256)


def _mac(key: bytes, data: bytes) -> bytes:
    mac = _keyed(key).copy()
    mac.update(data)
    return mac.digest()[:MAC_BYTES]


def seal_frame(key: bytes, kind: int, stream: int, seq: int, payload: bytes) -> bytes:
    """One frame, ready to send as a binary WebSocket message."""
    head = HEADER.pack(kind, stream, seq) + payload
    return head + _mac(key, head)


def open_frame(key: bytes, data: bytes, expected_seq: int) -> tuple[FrameType, int, bytes]:
    """Verify and split a received frame: ``(type, stream, payload)``.

    Raises :class:`FrameError` when the frame is too short, its MAC does not verify with ``key``,
    its sequence number is not ``expected_seq`` or its type is unknown.
    """
    if len(data) < _MIN_FRAME:
        raise FrameError("frame too short")
    head, mac = data[:-MAC_BYTES], data[-MAC_BYTES:]
    if not hmac.compare_digest(_mac(key, head), mac):
        raise FrameError("frame MAC does not verify (replayed, forged or from another link)")
    kind, stream, seq = HEADER.unpack_from(head)
    if seq != expected_seq:
        raise FrameError(f"frame sequence {seq}, expected {expected_seq} (replay or loss)")
    if kind not in _KNOWN_TYPES:
        raise FrameError(f"unknown frame type {kind}")
    return FrameType(kind), stream, head[HEADER.size :]


def encode_batch(frames: list[tuple[int, int, bytes]]) -> bytes:
    """The payload of a ``BATCH`` frame holding ``frames`` (``(type, stream, payload)``)."""
    parts: list[bytes] = []
    pack = INNER.pack
    for kind, stream, payload in frames:
        parts.append(pack(kind, stream, len(payload)))
        parts.append(payload)
    return b"".join(parts)


def decode_batch(payload: bytes) -> list[tuple[FrameType, int, bytes]]:
    """The frames of a ``BATCH`` payload, in order. Raises :class:`FrameError` for a truncated
    frame, an unknown type, or a batch inside a batch."""
    frames: list[tuple[FrameType, int, bytes]] = []
    offset = 0
    end = len(payload)
    unpack = INNER.unpack_from
    size = INNER.size
    while offset < end:
        if end - offset < size:
            raise FrameError("truncated frame header in a batch")
        kind, stream, length = unpack(payload, offset)
        offset += size
        if length > end - offset:
            raise FrameError("truncated frame in a batch")
        if kind not in _KNOWN_TYPES or kind in (FrameType.BATCH, FrameType.FEATURES):
            raise FrameError(f"frame type {kind} inside a batch")
        frames.append((FrameType(kind), stream, payload[offset : offset + length]))
        offset += length
    return frames


# -- payload helpers ---------------------------------------------------------------------------


def encode_meta_body(meta: Any, body: bytes = b"") -> bytes:
    """``u32 length | JSON meta | body``."""
    text = json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return _U32.pack(len(text)) + text + body


def decode_meta_body(payload: bytes) -> tuple[Any, bytes]:
    """Inverse of :func:`encode_meta_body`. Raises :class:`FrameError`."""
    if len(payload) < _U32.size:
        raise FrameError("payload too short for its meta length")
    (length,) = _U32.unpack_from(payload)
    end = _U32.size + length
    if end > len(payload):
        raise FrameError("meta length exceeds the payload")
    try:
        meta = json.loads(payload[_U32.size : end])
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FrameError("meta is not JSON") from exc
    return meta, payload[end:]


def encode_data(data: str | bytes) -> bytes:
    if isinstance(data, str):
        return b"\x00" + data.encode("utf-8")
    return b"\x01" + data


def decode_data(payload: bytes) -> str | bytes:
    if not payload or payload[0] not in (0, 1):
        raise FrameError("bad WebSocket data flag")
    if payload[0] == 0:
        try:
            return payload[1:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError("WebSocket text is not UTF-8") from exc
    return payload[1:]


def encode_close(code: int, reason: str = "") -> bytes:
    return _CLOSE.pack(code if 0 <= code < 65536 else 1011) + reason.encode("utf-8")[:120]


def decode_close(payload: bytes) -> tuple[int, str]:
    if len(payload) < _CLOSE.size:
        raise FrameError("close frame too short")
    (code,) = _CLOSE.unpack_from(payload)
    return code, payload[_CLOSE.size :].decode("utf-8", "replace")


def encode_u64_pair(a: int, b: int, rest: bytes = b"") -> bytes:
    return _U64_PAIR.pack(a, b) + rest


def decode_u64_pair(payload: bytes) -> tuple[int, int, bytes]:
    if len(payload) < _U64_PAIR.size:
        raise FrameError("payload too short")
    a, b = _U64_PAIR.unpack_from(payload)
    return a, b, payload[_U64_PAIR.size :]


def decode_u32(payload: bytes) -> int:
    if len(payload) != _U32.size:
        raise FrameError("bad u32 payload")
    value: int = _U32.unpack(payload)[0]
    return value


def encode_u32(value: int) -> bytes:
    return _U32.pack(value)


# -- typed metas ---------------------------------------------------------------------------------


def _headers_to_wire(headers: list[tuple[bytes, bytes]]) -> list[list[str]]:
    return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]


def _headers_from_wire(raw: Any) -> list[tuple[bytes, bytes]]:
    if not isinstance(raw, list):
        raise FrameError("headers must be a list")
    out: list[tuple[bytes, bytes]] = []
    for item in raw:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], str)
        ):
            raise FrameError("malformed header")
        try:
            out.append((item[0].encode("latin-1"), item[1].encode("latin-1")))
        except UnicodeEncodeError as exc:
            raise FrameError("header is not latin-1") from exc
    return out


def _address(raw: Any) -> tuple[str, int] | None:
    if raw is None:
        return None
    if (
        isinstance(raw, list)
        and len(raw) == 2
        and isinstance(raw[0], str)
        and isinstance(raw[1], int)
        and not isinstance(raw[1], bool)
    ):
        return raw[0], raw[1]
    raise FrameError("malformed address")


def _str(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key)
    if not isinstance(value, str):
        raise FrameError(f"meta field {key!r} missing or not a string")
    return value


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What the owner needs to rebuild the client's ASGI scope (HTTP or WebSocket)."""

    method: str
    path: str
    raw_path: bytes
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    client: tuple[str, int] | None
    server: tuple[str, int] | None
    scheme: str
    http_version: str
    subprotocols: tuple[str, ...] = ()

    @classmethod
    def from_scope(cls, scope: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> RequestMeta:
        client = scope.get("client")
        server = scope.get("server")
        return cls(
            method=str(scope.get("method", "GET")),
            path=str(scope["path"]),
            raw_path=scope.get("raw_path") or str(scope["path"]).encode("utf-8"),
            query_string=scope.get("query_string", b""),
            headers=headers,
            client=(str(client[0]), int(client[1])) if client else None,
            server=(str(server[0]), int(server[1] or 0)) if server else None,
            scheme=str(scope.get("scheme", "http")),
            http_version=str(scope.get("http_version", "1.1")),
            subprotocols=tuple(scope.get("subprotocols") or ()),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "m": self.method,
            "p": self.path,
            "rp": self.raw_path.decode("latin-1"),
            "q": self.query_string.decode("latin-1"),
            "h": _headers_to_wire(self.headers),
            "c": list(self.client) if self.client else None,
            "sv": list(self.server) if self.server else None,
            "s": self.scheme,
            "v": self.http_version,
            "sp": list(self.subprotocols),
        }

    @classmethod
    def from_wire(cls, meta: Any) -> RequestMeta:
        if not isinstance(meta, dict):
            raise FrameError("request meta is not an object")
        sub = meta.get("sp", [])
        if not isinstance(sub, list) or not all(isinstance(s, str) for s in sub):
            raise FrameError("malformed subprotocols")
        try:
            return cls(
                method=_str(meta, "m"),
                path=_str(meta, "p"),
                raw_path=_str(meta, "rp").encode("latin-1"),
                query_string=_str(meta, "q").encode("latin-1"),
                headers=_headers_from_wire(meta.get("h")),
                client=_address(meta.get("c")),
                server=_address(meta.get("sv")),
                scheme=_str(meta, "s"),
                http_version=_str(meta, "v"),
                subprotocols=tuple(sub),
            )
        except UnicodeEncodeError as exc:
            raise FrameError("path or query is not latin-1") from exc

    def scope(self, kind: str) -> dict[str, Any]:
        """A fresh ASGI scope of ``kind`` (``"http"`` or ``"websocket"``)."""
        scope: dict[str, Any] = {
            "type": kind,
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.http_version,
            "scheme": self.scheme,
            "path": self.path,
            "raw_path": self.raw_path,
            "query_string": self.query_string,
            "root_path": "",
            "headers": list(self.headers),
            "client": self.client,
            "server": self.server,
        }
        if kind == "http":
            scope["method"] = self.method
        else:
            scope["subprotocols"] = list(self.subprotocols)
        return scope


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    status: int
    headers: list[tuple[bytes, bytes]]

    def to_wire(self) -> dict[str, Any]:
        return {"st": self.status, "h": _headers_to_wire(self.headers)}

    @classmethod
    def from_wire(cls, meta: Any) -> ResponseMeta:
        if not isinstance(meta, dict):
            raise FrameError("response meta is not an object")
        status = meta.get("st")
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status < 600:
            raise FrameError("bad status")
        return cls(status=status, headers=_headers_from_wire(meta.get("h")))


# -- request and response frames: binary meta or JSON meta ------------------------------------

#: first byte of a binary request / response meta (a JSON meta starts with its u32 length,
#: whose first byte is 0 for anything under 16 MiB, so the two cannot be confused)
_BINARY_REQUEST = 0xB1
_BINARY_RESPONSE = 0xB2
#: magic, subprotocol count, header count, flags (1: client, 2: server), client port,
#: server port
_REQUEST_HEAD = struct.Struct(">BBHBHH")
#: magic, status, header count
_RESPONSE_HEAD = struct.Struct(">BHH")
_REQUEST_STRINGS = 8  # method, path, raw path, query, scheme, version, client, server hosts


@functools.lru_cache(maxsize=64)
def _lengths(count: int) -> struct.Struct:
    return struct.Struct(f">{count}I")


def _packable(meta: RequestMeta) -> bool:
    """Whether the binary request meta's fixed-size fields can hold ``meta`` (else JSON)."""
    return (
        len(meta.subprotocols) < 256
        and len(meta.headers) < 65536
        and all(0 <= a[1] < 65536 for a in (meta.client, meta.server) if a is not None)
    )


def _split(payload: bytes, offset: int, count: int) -> tuple[list[bytes], int]:
    """``count`` length-prefixed fields (all lengths first) from ``offset``; and the end."""
    lengths = _lengths(count)
    if len(payload) < offset + lengths.size:
        raise FrameError("meta truncated")
    sizes = lengths.unpack_from(payload, offset)
    offset += lengths.size
    if offset + sum(sizes) > len(payload):
        raise FrameError("meta field lengths exceed the payload")
    fields: list[bytes] = []
    for size in sizes:
        fields.append(payload[offset : offset + size])
        offset += size
    return fields, offset


def encode_request(meta: RequestMeta, body: bytes = b"", *, binary: bool) -> bytes:
    """A ``REQUEST`` (or ``WS_OPEN``) payload: ``meta`` and ``body``. ``binary`` (both ends
    read :data:`~siomesh.links.handshake.FEATURE_BINARY_META`) packs the meta as length-prefixed
    fields instead of JSON: a forward's meta costs about a fifth to build and read."""
    if not binary or not _packable(meta):
        return encode_meta_body(meta.to_wire(), body)
    client, server = meta.client, meta.server
    strings = [
        meta.method.encode("latin-1"),
        meta.path.encode("utf-8", "surrogatepass"),
        meta.raw_path,
        meta.query_string,
        meta.scheme.encode("latin-1"),
        meta.http_version.encode("latin-1"),
        client[0].encode("utf-8", "surrogatepass") if client else b"",
        server[0].encode("utf-8", "surrogatepass") if server else b"",
    ]
    strings += [s.encode("utf-8", "surrogatepass") for s in meta.subprotocols]
    for name, value in meta.headers:
        strings.append(name)
        strings.append(value)
    head = _REQUEST_HEAD.pack(
        _BINARY_REQUEST,
        len(meta.subprotocols),
        len(meta.headers),
        (1 if client else 0) | (2 if server else 0),
        client[1] if client else 0,
        server[1] if server else 0,
    )
    lengths = _lengths(len(strings)).pack(*map(len, strings))
    return b"".join((head, lengths, *strings, body))


def decode_request(payload: bytes) -> tuple[RequestMeta, bytes]:
    """Inverse of :func:`encode_request` (either form). Raises :class:`FrameError`."""
    if not payload or payload[0] != _BINARY_REQUEST:
        raw, body = decode_meta_body(payload)
        return RequestMeta.from_wire(raw), body
    if len(payload) < _REQUEST_HEAD.size:
        raise FrameError("request meta truncated")
    _, subs, count, flags, client_port, server_port = _REQUEST_HEAD.unpack_from(payload)
    fields, end = _split(payload, _REQUEST_HEAD.size, _REQUEST_STRINGS + subs + 2 * count)
    try:
        method, path, raw_path, query, scheme, version, client, server = fields[:8]
        headers = fields[_REQUEST_STRINGS + subs :]
        meta = RequestMeta(
            method=method.decode("latin-1"),
            path=path.decode("utf-8", "surrogatepass"),
            raw_path=raw_path,
            query_string=query,
            headers=list(zip(headers[::2], headers[1::2], strict=True)),
            client=(client.decode("utf-8", "surrogatepass"), client_port) if flags & 1 else None,
            server=(server.decode("utf-8", "surrogatepass"), server_port) if flags & 2 else None,
            scheme=scheme.decode("latin-1"),
            http_version=version.decode("latin-1"),
            subprotocols=tuple(
                s.decode("utf-8", "surrogatepass")
                for s in fields[_REQUEST_STRINGS : _REQUEST_STRINGS + subs]
            ),
        )
    except UnicodeDecodeError as exc:
        raise FrameError("request meta is not text where it must be") from exc
    return meta, payload[end:]


def encode_response(meta: ResponseMeta, body: bytes = b"", *, binary: bool) -> bytes:
    """A ``RESPONSE`` payload (see :func:`encode_request` for ``binary``)."""
    if not binary or len(meta.headers) >= 65536:
        return encode_meta_body(meta.to_wire(), body)
    strings: list[bytes] = []
    for name, value in meta.headers:
        strings.append(name)
        strings.append(value)
    head = _RESPONSE_HEAD.pack(_BINARY_RESPONSE, meta.status, len(meta.headers))
    lengths = _lengths(len(strings)).pack(*map(len, strings))
    return b"".join((head, lengths, *strings, body))


def decode_response(payload: bytes) -> tuple[ResponseMeta, bytes]:
    """Inverse of :func:`encode_response` (either form). Raises :class:`FrameError`."""
    if not payload or payload[0] != _BINARY_RESPONSE:
        raw, body = decode_meta_body(payload)
        return ResponseMeta.from_wire(raw), body
    if len(payload) < _RESPONSE_HEAD.size:
        raise FrameError("response meta truncated")
    _, status, count = _RESPONSE_HEAD.unpack_from(payload)
    if not 100 <= status < 600:
        raise FrameError("bad status")
    fields, end = _split(payload, _RESPONSE_HEAD.size, 2 * count)
    headers = list(zip(fields[::2], fields[1::2], strict=True))
    return ResponseMeta(status=status, headers=headers), payload[end:]
