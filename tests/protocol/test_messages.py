"""The wire codec: round trips, and garbage is refused only with DecodeError."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siomesh.protocol.messages import (
    Ack,
    Ack2,
    DecodeError,
    Entry,
    MemberUpdate,
    Message,
    OriginDelta,
    Ping,
    PingReq,
    Push,
    State,
    Syn,
    SynAck,
    decode,
    encode,
    json_str_len,
)

ints = st.integers(min_value=0, max_value=2**63 - 1)
texts = st.text(max_size=12)
updates = st.builds(MemberUpdate, texts, texts, ints, ints, st.sampled_from(State), texts)
upd_lists = st.lists(updates, max_size=3).map(tuple)


@st.composite
def deltas(draw: st.DrawFn) -> OriginDelta:
    lo = draw(st.integers(0, 1000))
    versions = sorted(draw(st.sets(st.integers(lo + 1, lo + 50), max_size=4)))
    hi = max([lo, *versions]) + draw(st.integers(0, 3))
    entries = tuple(Entry(draw(texts), draw(texts), v, draw(st.booleans())) for v in versions)
    return OriginDelta(draw(texts), draw(ints), lo, hi, draw(st.booleans()), draw(ints), entries)


delta_lists = st.lists(deltas(), max_size=3).map(tuple)
digests = st.lists(st.tuples(texts, ints, ints, ints), max_size=3).map(tuple)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, texts, ints, upd_lists),
    st.builds(Ack, texts, ints, upd_lists),
    st.builds(PingReq, texts, ints, texts, texts, upd_lists),
    st.builds(Push, texts, delta_lists, upd_lists),
    st.builds(Syn, texts, upd_lists, digests),
    st.builds(SynAck, texts, upd_lists, digests, delta_lists),
    st.builds(Ack2, texts, delta_lists, upd_lists),
)


@given(messages)
@settings(max_examples=120)
def test_round_trip(msg: Message) -> None:
    assert decode(encode(msg), max_bytes=10**7) == msg


@given(st.binary(max_size=300))
@settings(max_examples=200)
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@given(json_values)
@settings(max_examples=120)
def test_arbitrary_json_raises_only_decode_error(value: object) -> None:
    with contextlib.suppress(DecodeError):
        decode(json.dumps(value).encode())


@given(
    st.sampled_from(["ping", "ack", "pingreq", "push", "syn", "synack", "ack2"]),
    st.lists(json_values, max_size=6),
)
@settings(max_examples=120)
def test_known_kind_with_garbage_fields_raises_only_decode_error(
    kind: str, fields: list[object]
) -> None:
    with contextlib.suppress(DecodeError):
        decode(json.dumps([1, kind, *fields]).encode())


@given(messages, st.data())
@settings(max_examples=200)
def test_mutated_valid_message_raises_only_decode_error(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(encode(msg))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DecodeError):
        decode(bytes(raw), max_bytes=10**7)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{", "not JSON"),
        (b"{}", "expected a list"),
        (b'[2,"ping","a",1,[]]', "unsupported protocol version"),
        (b'[1,"pong","a",1,[]]', "unknown message kind"),
        (b'[1,"ping","a",1]', "expected 5 fields"),
        (b'[1,"ping","a",true,[]]', "seq"),
        (b'[1,"ping","a",-1,[]]', "seq"),
        (b'[1,"ping","a",1.5,[]]', "seq"),
        (b'[1,"ping","a",1,[["n","u",1,1,9,""]]]', "member state"),
        (b'[1,"push","a",[["o",1,5,3,false,0,[]]],[]]', "from version above"),
        (b'[1,"push","a",[["o",1,0,3,false,0,[["k","",9,false]]]],[]]', "outside"),
        (b"[" * 100_000 + b"]" * 100_000, "exceeds"),
    ],
)
def test_rejections_name_the_problem(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(data)


def test_deep_nesting_within_limit_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode(b"[" * 20_000 + b"]" * 20_000, max_bytes=10**6)


def test_oversize_rejected_before_parsing() -> None:
    msg = encode(Ping("a", 1))
    with pytest.raises(DecodeError, match="exceeds"):
        decode(msg, max_bytes=len(msg) - 1)


@given(st.text(max_size=20))
def test_json_str_len_is_exact(s: str) -> None:
    assert json_str_len(s) == len(json.dumps(s))
