"""The adapter's wire format and receive-side deduplication: pure functions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from siomesh.adapter.wire import (
    DedupWindow,
    WireError,
    pack,
    unpack,
)

json_scalars = st.none() | st.booleans() | st.integers() | st.text() | st.binary()
values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "b", "$b", "$d", "_placeholder", "num"]), inner)
    ),
    max_leaves=20,
)


@given(values)
def test_pack_round_trips_every_value_through_json(value: Any) -> None:
    wire = json.loads(json.dumps(pack(value)))
    assert unpack(wire) == value


def test_bytes_are_tagged_and_lookalike_dicts_escaped() -> None:
    assert pack(b"\x00\xff") == {"$b": "AP8="}
    assert pack({"$b": "not bytes"}) == {"$d": {"$b": "not bytes"}}
    assert unpack(pack({"$b": "not bytes"})) == {"$b": "not bytes"}
    assert pack((1, b"a")) == [1, {"$b": "YQ=="}]  # tuples travel as lists
    assert unpack({"$b": "YQ==", "other": 1}) == {"$b": "YQ==", "other": 1}


@pytest.mark.parametrize("bad", [{"$b": 5}, {"$b": "!!!"}, {"$d": [1]}])
def test_malformed_tags_raise_wire_error(bad: Any) -> None:
    with pytest.raises(WireError):
        unpack(bad)


def test_too_deep_values_are_refused() -> None:
    deep: Any = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(WireError):
        pack(deep)


def test_wire_error_is_a_value_error_so_the_endpoint_answers_400() -> None:
    assert issubclass(WireError, ValueError)


def test_dedup_accepts_each_sequence_once_per_sender() -> None:
    d = DedupWindow()
    assert [d.accept("a", 1, s) for s in (1, 2, 3)] == [True, True, True]
    assert [d.accept("a", 1, s) for s in (1, 2, 3)] == [False, False, False]  # a retry
    assert d.accept("b", 1, 1)  # senders are independent
    assert d.accept("a", 1, 10)  # gaps are allowed (dropped batches)
    assert not d.accept("a", 1, 9)
    assert d.watermark("a") == (1, 10)


def test_dedup_new_epoch_resets_old_epoch_is_refused() -> None:
    d = DedupWindow()
    assert d.accept("a", 5, 100)
    assert d.accept("a", 6, 1)  # the sender restarted
    assert not d.accept("a", 5, 101)  # a straggler from the dead process
    assert d.watermark("a") == (6, 1)


def test_dedup_memory_is_bounded() -> None:
    d = DedupWindow(max_senders=3)
    for name in "abcd":
        d.accept(name, 1, 1)
    assert set(d.snapshot()) == {"b", "c", "d"}
    d.accept("b", 1, 2)  # b is now the most recent
    d.accept("e", 1, 1)
    assert set(d.snapshot()) == {"b", "d", "e"}


@given(st.lists(st.tuples(st.sampled_from("xyz"), st.integers(0, 30)), max_size=60))
def test_dedup_never_delivers_twice_and_keeps_per_sender_order(
    arrivals: list[tuple[str, int]],
) -> None:
    d = DedupWindow()
    delivered: dict[str, list[int]] = {}
    for sender, seq in arrivals:
        if d.accept(sender, 1, seq):
            delivered.setdefault(sender, []).append(seq)
    for seqs in delivered.values():
        assert seqs == sorted(set(seqs))
