from __future__ import annotations

import secrets

from hypothesis import given
from hypothesis import strategies as st

from siomesh.sid import SID_LENGTH, SidKeys, generation_tag, make_sid, node_tag, parse_sid

KEYS = SidKeys.from_secret("a-test-secret-of-some-length")
URL = "http://127.0.0.1:8001"


def test_roundtrip_carries_owner_and_generation() -> None:
    sid = make_sid(KEYS, URL, 42, secrets.token_bytes(12))
    assert len(sid) == SID_LENGTH
    parts = parse_sid(KEYS, sid)
    assert parts is not None
    assert parts.node_tag == node_tag(KEYS, URL)
    assert parts.generation_tag == generation_tag(KEYS, 42)


def test_sids_use_engineio_alphabet_and_differ() -> None:
    sids = {make_sid(KEYS, URL, 1, secrets.token_bytes(12)) for _ in range(1000)}
    assert len(sids) == 1000
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert all(set(s) <= allowed for s in sids)


def test_other_secret_rejected() -> None:
    sid = make_sid(KEYS, URL, 1, secrets.token_bytes(12))
    assert parse_sid(SidKeys.from_secret("another-secret-xxxxxxxx"), sid) is None


def test_tampered_tag_rejected() -> None:
    sid = make_sid(KEYS, URL, 1, secrets.token_bytes(12))
    flipped = ("B" if sid[0] == "A" else "A") + sid[1:]
    assert parse_sid(KEYS, flipped) is None


def test_plain_engineio_sid_rejected() -> None:
    # python-engineio's own format: 20 characters
    assert parse_sid(KEYS, "Xx2kQ9dOj_w8TqVZAAAB") is None


def test_random_bytes_length_enforced() -> None:
    try:
        make_sid(KEYS, URL, 1, b"short")
    except ValueError:
        return
    raise AssertionError("expected ValueError")


def test_distinct_nodes_distinct_tags() -> None:
    tags = {node_tag(KEYS, f"http://10.0.0.{i}:8000") for i in range(200)}
    assert len(tags) == 200


@given(st.text(max_size=64))
def test_parse_never_raises(text: str) -> None:
    parse_sid(KEYS, text)


@given(st.binary(min_size=12, max_size=12), st.integers(min_value=0, max_value=2**63))
def test_any_random_roundtrips(random_bytes: bytes, generation: int) -> None:
    parts = parse_sid(KEYS, make_sid(KEYS, URL, generation, random_bytes))
    assert parts is not None and parts.generation_tag == generation_tag(KEYS, generation)
