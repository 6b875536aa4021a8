"""The pieces of connection state recovery that need no network: the event log (order, bounds,
who an event reaches), the wire form of entries, and reading an offset back from an encoded
Socket.IO event. The protocol end to end, with the npm client: tests/integration/test_recovery.py.
"""

from __future__ import annotations

import pytest

from siomesh.codec import WireError
from siomesh.config import ConfigError, MeshConfig, RecoveryConfig
from siomesh.recovery import Entry, Log, _offset_of


def _entry(offset: str, at: float, room: object = None, skip: tuple[str, ...] = ()) -> Entry:
    return Entry(offset, "/", room, skip, "said", [{"m": offset}, offset], at)


def test_log_keeps_order_and_finds_what_followed_an_offset() -> None:
    log = Log(100, 60.0)
    for i in range(5):
        log.add(_entry(f"n.{i}", float(i)))
    log.add(_entry("n.2", 9.0))  # the same offset twice: kept once
    after = log.after("n.2")
    assert after is not None and [e.offset for e in after] == ["n.3", "n.4"]
    assert log.after("unknown") is None
    assert [e.seq for e in log.entries] == [1, 2, 3, 4, 5]


def test_log_is_bounded_in_count_and_age() -> None:
    log = Log(3, 10.0)
    for i in range(5):
        log.add(_entry(f"n.{i}", float(i)))
    assert [e.offset for e in log.entries] == ["n.2", "n.3", "n.4"]
    assert "n.0" not in log.index
    log.add(_entry("n.5", 13.5))  # n.2 and n.3 are now older than 10 s
    assert [e.offset for e in log.entries] == ["n.4", "n.5"]
    assert log.bytes > 0


@pytest.mark.parametrize(
    ("room", "skip", "reaches"),
    [
        (None, (), True),  # the whole namespace
        ("chat", (), True),  # a room the session is in
        ("other", (), False),
        (["other", "chat"], (), True),
        ("sid-1", (), True),  # the session's own room
        (None, ("sid-1",), False),  # skipped
    ],
)
def test_who_an_event_reaches(room: object, skip: tuple[str, ...], reaches: bool) -> None:
    entry = _entry("n.1", 0.0, room, skip)
    assert entry.reaches("/", "sid-1", frozenset({"chat"})) is reaches
    assert not entry.reaches("/other-namespace", "sid-1", frozenset({"chat"}))


def test_entries_survive_the_wire_with_bytes() -> None:
    entry = Entry("n.7", "/", ("a", "b"), ("x",), "ev", [b"\x00\xff", {"k": 1}, "n.7"], 1.0)
    back = Entry.from_wire(entry.to_wire(), 5.0)
    assert (back.offset, back.room, back.skip, back.args) == (
        "n.7",
        ["a", "b"],
        ("x",),
        [b"\x00\xff", {"k": 1}, "n.7"],
    )
    with pytest.raises(WireError):
        Entry.from_wire(["too", "short"], 0.0)


def test_offset_of_an_encoded_event() -> None:
    assert _offset_of('2["said",{"m":"a,\\"b"},"n.1f"]') == "n.1f"
    assert _offset_of('2/chat,["said",1,"n.2"]') == "n.2"
    assert _offset_of('2["said",1]') is None  # no string last: no offset
    assert _offset_of('3["ack","n.1"]') is None  # acks carry no offset
    assert _offset_of(b"\x00") is None


def test_recovery_is_off_by_default_and_validated() -> None:
    config = MeshConfig.build(
        {}, node_url="http://127.0.0.1:1", secret="a-random-test-secret-9Qz7Lp2Rw5kT"
    )
    assert config.recovery.enabled is False
    on = MeshConfig.build(
        {"SIOMESH_RECOVERY_ENABLED": "1", "SIOMESH_RECOVERY_MAX_DISCONNECTION": "30"},
        node_url="http://127.0.0.1:1",
        secret="a-random-test-secret-9Qz7Lp2Rw5kT",
    )
    assert on.recovery.enabled and on.recovery.max_disconnection == 30.0
    with pytest.raises(ConfigError, match="max_disconnection"):
        RecoveryConfig(max_disconnection=0)
