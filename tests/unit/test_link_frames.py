"""The peer-link wire format (siomesh.links.frames): sealing, verification, payload helpers and
the request/response metas. Anything malformed raises FrameError and nothing else."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siomesh.links.frames import (
    HEADER,
    MAC_BYTES,
    FrameError,
    FrameType,
    RequestMeta,
    ResponseMeta,
    decode_batch,
    decode_close,
    decode_data,
    decode_meta_body,
    decode_request,
    decode_response,
    decode_u32,
    decode_u64_pair,
    encode_batch,
    encode_close,
    encode_data,
    encode_meta_body,
    encode_request,
    encode_response,
    encode_u32,
    encode_u64_pair,
    open_frame,
    seal_frame,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


# -- sealing and opening -------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FrameType))
def test_seal_open_round_trip(kind: FrameType) -> None:
    frame = seal_frame(KEY, kind, 7, 1, b"payload \x00\xff")
    assert len(frame) == HEADER.size + len(b"payload \x00\xff") + MAC_BYTES
    assert open_frame(KEY, frame, 1) == (kind, 7, b"payload \x00\xff")


def test_empty_payload_and_large_numbers() -> None:
    frame = seal_frame(KEY, FrameType.GOSSIP, 2**32 - 1, 2**64 - 1, b"")
    assert open_frame(KEY, frame, 2**64 - 1) == (FrameType.GOSSIP, 2**32 - 1, b"")


def test_a_sequence_of_frames_opens_in_order() -> None:
    frames = [seal_frame(KEY, FrameType.ADAPTER, 0, seq, b"%d" % seq) for seq in range(1, 6)]
    expected = 1
    for frame in frames:
        assert open_frame(KEY, frame, expected)[2] == b"%d" % expected
        expected += 1


def test_replayed_frame_is_refused() -> None:
    frame = seal_frame(KEY, FrameType.GOSSIP, 0, 1, b"hi")
    open_frame(KEY, frame, 1)
    # the receiver now expects seq 2: the same frame again is a replay
    with pytest.raises(FrameError, match="sequence"):
        open_frame(KEY, frame, 2)


def test_reordered_frames_are_refused() -> None:
    first = seal_frame(KEY, FrameType.GOSSIP, 0, 1, b"a")
    second = seal_frame(KEY, FrameType.GOSSIP, 0, 2, b"b")
    with pytest.raises(FrameError, match="sequence"):
        open_frame(KEY, second, 1)
    open_frame(KEY, first, 1)
    with pytest.raises(FrameError):
        open_frame(KEY, first, 2)


@pytest.mark.parametrize("position", [0, 1, 5, 12, 13, 14, -17, -1])
def test_any_flipped_bit_is_refused(position: int) -> None:
    frame = bytearray(seal_frame(KEY, FrameType.ADAPTER, 3, 1, b"some payload"))
    frame[position] ^= 0x01
    with pytest.raises(FrameError):
        open_frame(KEY, bytes(frame), 1)


def test_frame_sealed_with_another_key_is_refused() -> None:
    frame = seal_frame(OTHER_KEY, FrameType.GOSSIP, 0, 1, b"x")
    with pytest.raises(FrameError, match="MAC"):
        open_frame(KEY, frame, 1)


def test_unknown_type_is_refused_even_when_well_sealed() -> None:
    frame = seal_frame(KEY, 99, 0, 1, b"x")
    with pytest.raises(FrameError, match="unknown frame type"):
        open_frame(KEY, frame, 1)


@pytest.mark.parametrize("size", [0, 1, HEADER.size, HEADER.size + MAC_BYTES - 1])
def test_short_frames_are_refused(size: int) -> None:
    with pytest.raises(FrameError, match="too short"):
        open_frame(KEY, b"\x0a" * size, 1)


def test_truncated_and_extended_frames_are_refused() -> None:
    frame = seal_frame(KEY, FrameType.GOSSIP, 0, 1, b"payload")
    with pytest.raises(FrameError):
        open_frame(KEY, frame[:-1], 1)
    with pytest.raises(FrameError):
        open_frame(KEY, frame + b"\x00", 1)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200), expected=st.integers(min_value=0, max_value=2**64 - 1))
def test_open_frame_raises_only_frame_error(data: bytes, expected: int) -> None:
    with contextlib.suppress(FrameError):
        open_frame(KEY, data, expected)


@settings(max_examples=100, deadline=None)
@given(
    kind=st.sampled_from(list(FrameType)),
    stream=st.integers(min_value=0, max_value=2**32 - 1),
    seq=st.integers(min_value=0, max_value=2**64 - 1),
    payload=st.binary(max_size=100),
)
def test_round_trip_property(kind: FrameType, stream: int, seq: int, payload: bytes) -> None:
    assert open_frame(KEY, seal_frame(KEY, kind, stream, seq, payload), seq) == (
        kind,
        stream,
        payload,
    )


# -- payload helpers -----------------------------------------------------------------------


def test_meta_body_round_trip() -> None:
    meta = {"a": [1, "é", None], "b": {"c": True}}
    payload = encode_meta_body(meta, b"\x00body\xff")
    assert decode_meta_body(payload) == (meta, b"\x00body\xff")
    assert decode_meta_body(encode_meta_body(None)) == (None, b"")


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00\x00",
        b"\x00\x00\x00\x10{}",  # length beyond the payload
        b"\x00\x00\x00\x03abc",  # not JSON
        b"\x00\x00\x00\x02\xff\xfe",  # not UTF-8
        b"\x00\x00\x00\x00",  # empty meta is not JSON either
        b"\x00\x00\x03\xe8" + b"[" * 1000,  # deep nesting
    ],
)
def test_malformed_meta_body(payload: bytes) -> None:
    with pytest.raises(FrameError):
        decode_meta_body(payload)


def test_deeply_nested_meta_is_a_frame_error() -> None:
    text = b"[" * 100_000 + b"]" * 100_000
    payload = encode_u32(len(text)) + text
    with pytest.raises(FrameError):
        decode_meta_body(payload)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_decode_meta_body_raises_only_frame_error(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode_meta_body(data)


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=50), text=st.text(max_size=50))
def test_meta_body_with_any_text_round_trips(body: bytes, text: str) -> None:
    try:
        payload = encode_meta_body({"t": text}, body)
    except UnicodeEncodeError:
        return  # lone surrogates have no UTF-8 form: never produced by the node itself
    assert decode_meta_body(payload) == ({"t": text}, body)


def test_data_round_trip_and_errors() -> None:
    assert decode_data(encode_data("héllo")) == "héllo"
    assert decode_data(encode_data(b"\x00\x01")) == b"\x00\x01"
    assert decode_data(encode_data("")) == ""
    assert decode_data(encode_data(b"")) == b""
    for bad in (b"", b"\x02abc", b"\x00\xff\xfe"):
        with pytest.raises(FrameError):
            decode_data(bad)


def test_close_round_trip_and_errors() -> None:
    assert decode_close(encode_close(1000, "bye")) == (1000, "bye")
    assert decode_close(encode_close(70000))[0] == 1011  # out of range: internal error
    assert decode_close(encode_close(-1))[0] == 1011
    assert len(encode_close(1000, "x" * 500)) == 2 + 120  # reason bounded
    assert decode_close(b"\x03\xe8\xff") == (1000, "\ufffd")
    with pytest.raises(FrameError):
        decode_close(b"\x03")


def test_integer_helpers() -> None:
    assert decode_u64_pair(encode_u64_pair(1, 2**64 - 1, b"rest")) == (1, 2**64 - 1, b"rest")
    assert decode_u32(encode_u32(123456)) == 123456
    with pytest.raises(FrameError):
        decode_u64_pair(b"\x00" * 15)
    for bad in (b"", b"\x00" * 3, b"\x00" * 5):
        with pytest.raises(FrameError):
            decode_u32(bad)


# -- metas ---------------------------------------------------------------------------------


def request_meta(**overrides: Any) -> RequestMeta:
    fields: dict[str, Any] = {
        "method": "POST",
        "path": "/socket.io/",
        "raw_path": b"/socket.io/",
        "query_string": b"EIO=4&transport=polling&sid=abc&j=\xe9",
        "headers": [
            (b"host", b"example.com"),
            (b"x-latin", bytes(range(0x20, 0x7F)) + bytes(range(0xA0, 0x100))),
            (b"cookie", b"a=1; b=2"),
        ],
        "client": ("10.0.0.1", 5555),
        "server": ("10.0.0.2", 8000),
        "scheme": "https",
        "http_version": "1.1",
        "subprotocols": ("chat", "v2"),
    }
    fields.update(overrides)
    return RequestMeta(**fields)


def through_the_wire(meta: dict[str, Any]) -> Any:
    """What the receiver decodes: the meta as JSON text."""
    return decode_meta_body(encode_meta_body(meta))[0]


def test_request_meta_round_trip_keeps_latin1_bytes() -> None:
    meta = request_meta()
    again = RequestMeta.from_wire(through_the_wire(meta.to_wire()))
    assert again == meta
    assert again.headers[1][1] == meta.headers[1][1]


def test_request_meta_without_addresses() -> None:
    meta = request_meta(client=None, server=None, subprotocols=())
    assert RequestMeta.from_wire(through_the_wire(meta.to_wire())) == meta


def test_request_meta_from_scope_and_back_to_scope() -> None:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/socket.io/",
        "query_string": b"EIO=4",
        "client": ("1.2.3.4", 1),
        "server": ("5.6.7.8", None),
    }
    meta = RequestMeta.from_scope(scope, [(b"host", b"h")])
    assert meta.raw_path == b"/socket.io/" and meta.server == ("5.6.7.8", 0)
    assert meta.scheme == "http" and meta.http_version == "1.1"
    http = meta.scope("http")
    assert http["type"] == "http" and http["method"] == "GET" and "subprotocols" not in http
    assert http["headers"] == [(b"host", b"h")] and http["client"] == ("1.2.3.4", 1)
    ws = request_meta().scope("websocket")
    assert ws["type"] == "websocket" and ws["subprotocols"] == ["chat", "v2"]
    assert "method" not in ws
    # each scope gets its own header list (the owner appends to it)
    assert meta.scope("http")["headers"] is not meta.headers


def test_response_meta_round_trip() -> None:
    meta = ResponseMeta(status=200, headers=[(b"content-type", b"text/plain; \xe9")])
    assert ResponseMeta.from_wire(through_the_wire(meta.to_wire())) == meta


VALID_REQUEST = request_meta().to_wire()


@pytest.mark.parametrize(
    "meta",
    [
        None,
        [],
        "x",
        {},
        {**VALID_REQUEST, "m": 1},
        {**VALID_REQUEST, "p": None},
        {**VALID_REQUEST, "rp": "\u0100"},  # not latin-1
        {**VALID_REQUEST, "q": "\u20ac"},
        {**VALID_REQUEST, "h": "x"},
        {**VALID_REQUEST, "h": [["a"]]},
        {**VALID_REQUEST, "h": [["a", 1]]},
        {**VALID_REQUEST, "h": [["a", "\u20ac"]]},
        {**VALID_REQUEST, "h": [("a", "b", "c")]},
        {**VALID_REQUEST, "c": ["1.2.3.4"]},
        {**VALID_REQUEST, "c": ["1.2.3.4", "80"]},
        {**VALID_REQUEST, "c": ["1.2.3.4", True]},
        {**VALID_REQUEST, "sv": "host"},
        {**VALID_REQUEST, "s": None},
        {**VALID_REQUEST, "v": 1.1},
        {**VALID_REQUEST, "sp": "chat"},
        {**VALID_REQUEST, "sp": [1]},
    ],
)
def test_malformed_request_meta(meta: Any) -> None:
    with pytest.raises(FrameError):
        RequestMeta.from_wire(meta)


@pytest.mark.parametrize(
    "meta",
    [
        None,
        [],
        {"h": []},
        {"st": "200", "h": []},
        {"st": True, "h": []},
        {"st": 99, "h": []},
        {"st": 600, "h": []},
        {"st": 200},
        {"st": 200, "h": [[1, 2]]},
    ],
)
def test_malformed_response_meta(meta: Any) -> None:
    with pytest.raises(FrameError):
        ResponseMeta.from_wire(meta)


SCALAR = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
#: values shaped like a meta's fields (strings, pairs, lists of pairs), right or wrong
FIELD = SCALAR | st.lists(SCALAR, max_size=3) | st.lists(st.lists(SCALAR, max_size=3), max_size=3)


@settings(max_examples=75, deadline=None)
@given(JSON)
def test_request_meta_from_any_json_raises_only_frame_error(meta: Any) -> None:
    with contextlib.suppress(FrameError):
        RequestMeta.from_wire(meta)


@settings(max_examples=150, deadline=None)
@given(
    replaced=st.dictionaries(st.sampled_from(sorted(VALID_REQUEST)), FIELD, max_size=3),
    removed=st.sets(st.sampled_from(sorted(VALID_REQUEST)), max_size=2),
)
def test_request_meta_with_any_field_values_raises_only_frame_error(
    replaced: dict[str, Any], removed: set[str]
) -> None:
    meta = {**VALID_REQUEST, **replaced}
    for key in removed:
        meta.pop(key, None)
    try:
        decoded = RequestMeta.from_wire(meta)
    except FrameError:
        return
    # whatever was accepted survives another round trip unchanged
    assert RequestMeta.from_wire(through_the_wire(decoded.to_wire())) == decoded


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_request_meta_from_random_payloads_raises_only_frame_error(data: bytes) -> None:
    for parse in (RequestMeta.from_wire, ResponseMeta.from_wire):
        with pytest.raises(FrameError):
            parse(data)  # not even a decoded meta
    try:
        meta, _ = decode_meta_body(data)
    except FrameError:
        return
    for parse in (RequestMeta.from_wire, ResponseMeta.from_wire):
        with contextlib.suppress(FrameError):
            parse(meta)


@settings(max_examples=75, deadline=None)
@given(JSON)
def test_response_meta_from_any_json_raises_only_frame_error(meta: Any) -> None:
    with contextlib.suppress(FrameError):
        ResponseMeta.from_wire(meta)


def test_mutated_valid_request_metas_raise_only_frame_error() -> None:
    text = json.dumps(VALID_REQUEST)
    for i in range(len(text)):
        for replacement in ('"', "1", "[", "}", "\\"):
            mutated = text[:i] + replacement + text[i + 1 :]
            payload = encode_u32(len(mutated.encode())) + mutated.encode()
            with contextlib.suppress(FrameError):
                RequestMeta.from_wire(decode_meta_body(payload)[0])


def test_batches_round_trip() -> None:
    frames = [
        (int(FrameType.GOSSIP), 0, b"a"),
        (int(FrameType.RESPONSE), 9, b""),
        (40, 0, b"x" * 300),
    ]
    assert decode_batch(encode_batch(frames)) == [
        (FrameType.GOSSIP, 0, b"a"),
        (FrameType.RESPONSE, 9, b""),
        (FrameType.ADAPTER, 0, b"x" * 300),
    ]
    assert decode_batch(b"") == []


@pytest.mark.parametrize(
    "payload",
    [
        b"\x1e\x00",  # a truncated header
        encode_batch([(int(FrameType.GOSSIP), 0, b"abc")])[:-1],  # a truncated payload
        encode_batch([(99, 0, b"")]),  # an unknown type
        encode_batch([(int(FrameType.BATCH), 0, b"")]),  # a batch in a batch
    ],
)
def test_malformed_batches_raise_frame_error(payload: bytes) -> None:
    with pytest.raises(FrameError):
        decode_batch(payload)


REQUEST = RequestMeta(
    method="POST",
    path="/socket.io/é",
    raw_path=b"/socket.io/%C3%A9",
    query_string=b"EIO=4&transport=polling&sid=abc",
    headers=[(b"host", b"example.test"), (b"x-empty", b""), (b"cookie", b"\xff\x00binary")],
    client=("::1", 50123),
    server=("127.0.0.1", 8000),
    scheme="https",
    http_version="1.1",
    subprotocols=("chat", "superchat"),
)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_requests_and_responses_round_trip_in_either_form(binary: bool) -> None:
    payload = encode_request(REQUEST, b"4hello", binary=binary)
    assert (payload[0] == 0xB1) is binary
    assert decode_request(payload) == (REQUEST, b"4hello")
    bare = RequestMeta("GET", "/", b"/", b"", [], None, None, "http", "1.0")
    assert decode_request(encode_request(bare, binary=binary)) == (bare, b"")
    response = ResponseMeta(status=200, headers=[(b"content-type", b"text/plain")])
    assert decode_response(encode_response(response, b"ok", binary=binary)) == (response, b"ok")


def test_binary_meta_falls_back_to_json_where_its_fields_cannot_hold_it() -> None:
    odd = RequestMeta("GET", "/", b"/", b"", [], ("h", 70000), None, "http", "1.1")
    payload = encode_request(odd, binary=True)
    assert payload[0] == 0  # a JSON meta
    assert decode_request(payload) == (odd, b"")


@pytest.mark.parametrize(
    "payload",
    [
        b"\xb1\x00",  # truncated head
        encode_request(REQUEST, binary=True)[:40],  # lengths beyond the payload
        b"\xb2\x00\x00\x00\x00",  # status 0
        b"\xb2\x00\xc8\x00\x05",  # five headers, no lengths
    ],
)
def test_malformed_binary_metas_raise_frame_error(payload: bytes) -> None:
    with pytest.raises(FrameError):
        if payload[0] == 0xB1:
            decode_request(payload)
        else:
            decode_response(payload)
