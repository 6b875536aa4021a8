"""PeerChannel (siomesh.adapter.channel): ordered, acknowledged, bounded adapter messages to one
peer, driven with a fake link that records what it is given."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from siomesh.adapter.channel import Emission, LinkSettings, PeerChannel, Targets, merge_targets
from siomesh.links.frames import FrameType, decode_u64_pair
from siomesh.ratelimit import RateLimitedLog

PEER = "http://127.0.0.1:9202"
EPOCH = 77


class FakeLink:
    """What a channel needs of a Link: ``send(kind, stream, payload) -> bool``."""

    def __init__(self, peer: str = PEER, capacity: int | None = None) -> None:
        self.peer = peer
        self.kind = "data"
        self.is_open = True
        self.capacity = capacity  # frames it takes before refusing (a full buffer)
        self.frames: list[tuple[FrameType, int, int, Any]] = []
        #: stable watermarks told to the peer: (epoch, stable), in order
        self.notices: list[tuple[int, int]] = []

    def send(self, kind: FrameType, stream: int, payload: bytes) -> bool:
        assert stream == 0
        if not self.is_open:
            return False
        epoch, seq, rest = decode_u64_pair(payload)
        if kind is FrameType.ADAPTER_ACK:  # a stable notice: acknowledges nothing
            assert (epoch, seq) == (0, 0)
            stable_epoch, stable, _ = decode_u64_pair(rest)
            self.notices.append((stable_epoch, stable))
            return True
        if self.capacity is not None and len(self.frames) >= self.capacity:
            return False
        body: Any = rest.decode() if kind is FrameType.ADAPTER else json.loads(rest)
        self.frames.append((kind, epoch, seq, body))
        return True

    def texts(self) -> list[str]:
        return [body for kind, _, _, body in self.frames if kind is FrameType.ADAPTER]

    def seqs(self) -> list[int]:
        return [seq for _, _, seq, _ in self.frames]


class Harness:
    def __init__(self, max_queue: int = 10_000) -> None:
        self.link: FakeLink | None = None
        self.dials: list[str] = []
        self.channel = PeerChannel(
            PEER,
            epoch=EPOCH,
            current_link=self.current,
            dial=self.dials.append,
            settings=LinkSettings(max_queue=max_queue),
            warn=RateLimitedLog(logging.getLogger("test.channel")),
        )

    def current(self, peer: str) -> Any:
        assert peer == PEER
        return self.link

    def enqueue(self, *names: str, targets: Targets | None = None) -> list[bool]:
        return [
            self.channel.enqueue(name, targets if targets is not None else {"/": [name]})
            for name in names
        ]


def names(n: int, prefix: str = "m") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_messages_are_sent_in_order_when_a_link_is_present() -> None:
    h = Harness()
    h.link = FakeLink()
    assert h.enqueue(*names(100)) == [True] * 100
    assert h.link.texts() == names(100)
    assert h.link.seqs() == list(range(1, 101))
    assert {epoch for _, epoch, _, _ in h.link.frames} == {EPOCH}
    assert h.channel.stats["sent"] == 100 and h.dials == []
    assert len(h.channel) == 100  # kept until acknowledged
    assert not h.channel.idle


def test_without_a_link_messages_wait_and_a_dial_is_asked_for() -> None:
    h = Harness()
    h.enqueue("a", "b")
    assert h.dials == [PEER, PEER] and len(h.channel) == 2
    h.link = FakeLink()
    h.channel.pump()  # the link came up
    assert h.link.texts() == ["a", "b"] and h.link.seqs() == [1, 2]
    assert h.channel.stats["resent"] == 0


def test_acks_pop_messages_cumulatively() -> None:
    h = Harness()
    h.link = FakeLink()
    h.enqueue(*names(10))
    h.channel.on_ack(EPOCH, 4)
    assert len(h.channel) == 6 and h.channel.stats["acked"] == 4
    h.channel.on_ack(EPOCH, 2)  # older ack: nothing to pop
    assert len(h.channel) == 6
    h.channel.on_ack(EPOCH + 1, 10)  # another sender incarnation's ack: ignored
    assert len(h.channel) == 6
    h.channel.on_ack(EPOCH, 10)
    assert len(h.channel) == 0 and h.channel.idle and h.channel.stats["acked"] == 10


def test_unacked_messages_are_resent_in_order_on_a_new_link() -> None:
    h = Harness()
    first = h.link = FakeLink()
    h.enqueue(*names(5))
    h.channel.on_ack(EPOCH, 2)
    # the link breaks; a new one comes up; the next message goes after the unacked ones
    first.is_open = False
    second = h.link = FakeLink()
    h.enqueue("m5")
    assert second.texts() == ["m2", "m3", "m4", "m5"]
    assert second.seqs() == [3, 4, 5, 6]  # same sequence numbers: the receiver dedupes
    assert h.channel.stats["resent"] == 3
    h.channel.on_ack(EPOCH, 6)
    assert h.channel.idle and len(h.channel) == 0


def test_a_new_link_alone_resends_the_unacked_messages() -> None:
    h = Harness()
    h.link = FakeLink()
    h.enqueue("a", "b")
    h.link = FakeLink()  # a new incarnation, nothing new to send
    h.channel.pump()
    assert h.link.texts() == ["a", "b"]


def test_a_full_link_stops_the_pump_and_the_next_pump_resumes() -> None:
    h = Harness()
    h.link = FakeLink(capacity=3)
    h.enqueue(*names(5))
    assert h.link.texts() == ["m0", "m1", "m2"]
    h.link.capacity = None
    h.channel.pump()
    assert h.link.texts() == names(5)
    assert h.channel.stats["sent"] == 5 and h.channel.stats["resent"] == 0


def test_an_ack_pumps_what_is_waiting() -> None:
    h = Harness()
    h.link = FakeLink(capacity=2)
    h.enqueue(*names(4))
    h.link.capacity = None
    h.channel.on_ack(EPOCH, 2)
    assert h.link.texts() == names(4)


def test_beyond_max_queue_messages_fold_into_one_gap_with_merged_targets() -> None:
    h = Harness(max_queue=3)
    assert h.enqueue("a", "b", "c") == [True] * 3  # no link: all three wait
    assert h.channel.enqueue("d", {"/": ["red"]}) is False
    assert h.channel.enqueue("e", {"/": ["blue", "red"], "/chat": ["x"]}) is False
    assert h.channel.enqueue("f", {"/admin": None}) is False
    assert len(h.channel) == 3
    assert h.channel.stats["gaps"] == 1 and h.channel.stats["gap_messages"] == 3
    h.link = FakeLink()
    h.channel.pump()
    assert [kind for kind, *_ in h.link.frames] == [FrameType.ADAPTER] * 3 + [FrameType.ADAPTER_GAP]
    _, epoch, last, detail = h.link.frames[-1]
    assert (epoch, last) == (EPOCH, 6)
    assert detail == {"first": 4, "targets": {"/": ["red", "blue"], "/chat": ["x"], "/admin": None}}


def test_room_is_made_by_acks_and_later_messages_follow_the_gap() -> None:
    h = Harness(max_queue=2)
    h.link = FakeLink()
    h.enqueue("a", "b")
    assert h.enqueue("c") == [False]  # in flight but not acked: still counted
    h.channel.on_ack(EPOCH, 2)  # the gap waits in the queue; the ack pumps it
    assert h.enqueue("d") == [True]
    kinds = [(kind, seq) for kind, _, seq, _ in h.link.frames]
    assert kinds == [
        (FrameType.ADAPTER, 1),
        (FrameType.ADAPTER, 2),
        (FrameType.ADAPTER_GAP, 3),
        (FrameType.ADAPTER, 4),
    ]
    h.channel.on_ack(EPOCH, 4)
    assert h.channel.idle and len(h.channel) == 0


def test_separate_overflows_make_separate_gaps() -> None:
    h = Harness(max_queue=1)
    h.enqueue("a")
    h.enqueue("b", "c")  # one gap: 2..3
    h.link = FakeLink()
    h.channel.pump()
    h.channel.on_ack(EPOCH, 1)
    h.enqueue("d")  # 4, accepted
    h.enqueue("e")  # 5, a new gap: the old one was sent already
    h.channel.pump()
    gaps = [
        (seq, body["first"])
        for kind, _, seq, body in h.link.frames
        if kind is FrameType.ADAPTER_GAP
    ]
    assert gaps == [(3, 2), (5, 5)]
    assert h.channel.stats["gaps"] == 2 and h.channel.stats["gap_messages"] == 3


def test_abandon_replaces_everything_with_one_gap() -> None:
    h = Harness()
    h.link = FakeLink()
    h.enqueue("a", targets={"/": ["r1"]})
    h.enqueue("b", targets={"/": ["r2"]})
    h.link = None  # the peer went away
    h.enqueue("c", targets={"/chat": None})
    assert h.channel.abandon("peer is dead") == 3
    assert len(h.channel) == 0
    assert h.channel.stats["gaps"] == 1 and h.channel.stats["gap_messages"] == 3
    assert h.channel.abandon("again") == 0  # only a gap is left
    # the peer comes back: it gets one gap for 1..3, so it resyncs the clients concerned
    h.link = FakeLink()
    h.enqueue("d")
    assert [(kind, seq) for kind, _, seq, _ in h.link.frames] == [
        (FrameType.ADAPTER_GAP, 3),
        (FrameType.ADAPTER, 4),
    ]
    assert h.link.frames[0][3] == {"first": 1, "targets": {"/": ["r1", "r2"], "/chat": None}}
    h.channel.on_ack(EPOCH, 4)
    assert h.channel.idle


def test_abandon_of_an_idle_channel_drops_nothing() -> None:
    h = Harness()
    assert h.channel.abandon("dead") == 0
    assert h.channel.idle and h.channel.stats["gaps"] == 0


def test_messages_skipped_for_an_absent_peer_take_fresh_sequence_numbers_in_a_gap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The peer is not a live member (dead, or a seed never heard from): what it would have got
    is not queued and nothing is sent, but the messages take sequence numbers, folded into a
    gap; if it comes back, that gap comes first and its sequence number is new to it."""
    h = Harness()
    h.link = FakeLink()
    h.enqueue("a")
    h.channel.on_ack(EPOCH, 1)
    assert h.channel.idle
    with caplog.at_level(logging.INFO, logger="siomesh.adapter"):
        h.channel.skip({"/": ["r1"]}, "is not a live member")
        h.channel.skip({}, "is not a live member")  # concerns no client there: nothing
        h.channel.skip({"/": ["r2"], "/chat": None}, "is not a live member")
    assert [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()] == [
        f"adapter messages for {PEER} are not sent while it is not a live member; if it comes "
        "back, its clients that may have missed them are disconnected to resync"
    ]  # once per episode
    assert len(h.link.frames) == 1 and len(h.channel) == 0 and not h.channel.idle
    assert h.channel.stats["gaps"] == 1 and h.channel.stats["gap_messages"] == 2
    h.enqueue("d")  # it is live again
    assert [(kind, seq) for kind, _, seq, _ in h.link.frames] == [
        (FrameType.ADAPTER, 1),
        (FrameType.ADAPTER_GAP, 3),
        (FrameType.ADAPTER, 4),
    ]
    assert h.link.frames[1][3] == {"first": 2, "targets": {"/": ["r1", "r2"], "/chat": None}}
    h.channel.on_ack(EPOCH, 4)
    assert h.channel.idle
    h.channel.skip({"/": None}, "is not a live member")  # a new episode, a new gap
    assert h.channel.stats["gaps"] == 2


def test_a_skip_after_abandon_makes_the_gap_new_to_the_receiver() -> None:
    """A frozen peer may have applied what was in flight (its socket buffer) although it never
    acknowledged it: the abandoned gap carries the last of those sequence numbers, which that
    receiver skips as a duplicate, rightly. What was skipped afterwards extends the gap to a
    sequence number it has never seen, so the gap is applied."""
    h = Harness()
    h.link = FakeLink()
    h.enqueue("a", "b")  # sent, applied there, never acknowledged
    assert h.channel.abandon("peer is no longer a live member") == 2
    h.channel.skip({"/": ["r9"]}, "is not a live member")
    h.channel.skip({"/": ["r9"]}, "is not a live member")
    h.enqueue("e")
    assert [(kind, seq) for kind, _, seq, _ in h.link.frames][2:] == [
        (FrameType.ADAPTER_GAP, 4),
        (FrameType.ADAPTER, 5),
    ]
    assert h.link.frames[2][3] == {"first": 1, "targets": {"/": ["a", "b", "r9"]}}
    assert h.channel.stats["gap_messages"] == 4


def test_settings_validate() -> None:
    with pytest.raises(ValueError):
        LinkSettings(max_queue=0)
    assert LinkSettings().max_queue == 10_000


# -- merge_targets ----------------------------------------------------------------------------


def test_merge_targets_semantics() -> None:
    into: Targets = {}
    rooms = ["a", "b"]
    merge_targets(into, {"/": rooms})
    assert into == {"/": ["a", "b"]}
    assert into["/"] is not rooms  # copied: merging later must not change the caller's list
    merge_targets(into, {"/": ["b", "c", "c"], "/x": None})
    assert into == {"/": ["a", "b", "c"], "/x": None}
    assert rooms == ["a", "b"]
    merge_targets(into, {"/x": ["r"]})  # a wholly concerned namespace stays so
    assert into["/x"] is None
    merge_targets(into, {"/": None})
    assert into == {"/": None, "/x": None}
    merge_targets(into, {})
    assert into == {"/": None, "/x": None}


def test_merge_targets_gives_up_naming_more_than_a_thousand_rooms() -> None:
    into: Targets = {"/": [f"r{i}" for i in range(990)]}
    merge_targets(into, {"/": [f"s{i}" for i in range(10)]})
    assert into["/"] is not None and len(into["/"]) == 1000
    merge_targets(into, {"/": ["one more"]})
    assert into["/"] is None


def test_merge_targets_keeps_non_string_rooms() -> None:
    into: Targets = {"/": [1]}
    merge_targets(into, {"/": [1, 2, "2"]})
    assert into == {"/": [1, 2, "2"]}


# -- emit-completion order: emissions, lagging peers, the stable watermark --------------------


def emit(h: Harness, name: str) -> Emission:
    emission = Emission()
    assert h.channel.enqueue(name, {"/": None}, emission)
    return emission


def test_an_emission_waits_for_the_peers_acknowledgement() -> None:
    h = Harness()
    h.link = FakeLink()
    first, second = emit(h, "a"), emit(h, "b")
    assert (first.pending, second.pending) == (1, 1)
    assert h.channel.waits_for(1) and h.channel.waits_for(2)
    h.channel.on_ack(EPOCH, 1)
    assert (first.pending, second.pending) == (0, 1)
    assert not h.channel.waits_for(1) and h.channel.waits_for(2)
    h.channel.on_ack(EPOCH, 2)
    assert second.pending == 0 and not h.channel.waits_for(2)


def test_the_stable_watermark_follows_done_emissions_in_order() -> None:
    h = Harness()
    h.link = FakeLink()
    h.channel.enqueue("x", {"/": None})  # not waited for: stable at once
    first, second = emit(h, "a"), emit(h, "b")
    assert h.link.notices == [(EPOCH, 1)]  # the link's first frame: this node keeps them
    assert h.channel.stable == 1
    second.done = True  # the later one is done first: the earlier one holds the mark back
    h.channel.settle()
    assert h.channel.stable == 1
    first.done = True
    assert h.channel.settle() and h.channel.stable == 3
    h.channel.notify_stable()
    h.channel.notify_stable()  # nothing new: not told again
    assert h.link.notices == [(EPOCH, 1), (EPOCH, 3)]
    assert not h.channel.settle()


def test_a_new_link_is_told_the_stable_watermark_before_anything_else() -> None:
    h = Harness()
    h.link = FakeLink()
    emission = emit(h, "a")
    h.channel.on_ack(EPOCH, 1)
    emission.done = True
    h.channel.settle()
    h.link = second = FakeLink()  # no link open when the mark moved: the next one is told
    h.channel.notify_stable()
    assert second.notices == [(EPOCH, 1)] and second.frames == []
    h.link = third = FakeLink()
    h.channel.enqueue("b", {"/": None})
    assert third.notices == [(EPOCH, 2)] and third.texts() == ["b"]


def test_a_lagging_peer_is_not_waited_for_until_it_catches_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    h.link = FakeLink()
    first, second = emit(h, "a"), emit(h, "b")
    h.channel.timed_out(time.monotonic(), 0.5)  # never acknowledged anything: stalled
    assert (first.pending, second.pending) == (0, 0)  # released
    assert h.channel.lagging and h.channel.stats["lagging"] == 1
    assert h.channel.stats["order_timeouts"] == 1
    assert "has not acknowledged anything for adapter.order_timeout" in caplog.text
    third = emit(h, "c")
    assert third.pending == 0 and not h.channel.waits_for(3)
    h.channel.lag("no acknowledgement", 0.5)  # the same episode: counted once
    assert h.channel.stats["lagging"] == 1
    h.channel.on_ack(EPOCH, 2)  # acknowledges what it had when it lagged: caught up
    assert not h.channel.lagging
    assert emit(h, "d").pending == 1


def test_a_busy_peer_is_still_waited_for_after_an_emit_timed_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    h.link = FakeLink()
    emit(h, "a")
    late = emit(h, "b")
    h.channel.on_ack(EPOCH, 1)  # it acknowledges, slowly: busy, not stalled
    h.channel.timed_out(time.monotonic(), 0.5)
    assert not h.channel.lagging and h.channel.stats["order_timeouts"] == 1
    assert late.pending == 1 and h.channel.waits_for(2)  # later emits still wait for it
    assert "that node is busy" in caplog.text
    h.channel.timed_out(time.monotonic() + 1.0, 0.5)  # nothing for a whole bound: stalled
    assert h.channel.lagging and late.pending == 0


def test_abandon_releases_the_emissions_waiting_for_the_peer() -> None:
    h = Harness()
    h.link = FakeLink()
    emission = emit(h, "a")
    h.channel.abandon("peer is no longer a live member")
    assert emission.pending == 0 and not h.channel.waits_for(1)
