"""Membership precedence (table-driven), refutation, Lifeguard timeouts, tombstones."""

from __future__ import annotations

import math

import pytest

from siomesh.protocol.membership import GossipConfig, Member, Membership, supersedes
from siomesh.protocol.messages import MemberUpdate, State

A, S, D, L = State.ALIVE, State.SUSPECT, State.DEAD, State.LEFT


def member(gen: int, inc: int, state: State) -> Member:
    return Member("x", "http://x", gen, inc, state, 0.0)


def upd(gen: int, inc: int, state: State, by: str = "") -> MemberUpdate:
    return MemberUpdate("x", "http://x", gen, inc, state, by)


@pytest.mark.parametrize(
    ("old", "new", "wins"),
    [
        # higher generation always wins, in any state
        ((1, 5, D), (2, 0, A), True),
        ((1, 0, A), (2, 0, D), True),
        ((2, 0, A), (1, 9, D), False),
        # higher incarnation wins within a generation
        ((1, 1, S), (1, 2, A), True),
        ((1, 1, D), (1, 2, A), True),
        ((1, 2, A), (1, 1, D), False),
        # equal incarnation: DEAD/LEFT > SUSPECT > ALIVE
        ((1, 1, A), (1, 1, S), True),
        ((1, 1, S), (1, 1, A), False),
        ((1, 1, S), (1, 1, D), True),
        ((1, 1, A), (1, 1, L), True),
        ((1, 1, D), (1, 1, S), False),
        ((1, 1, D), (1, 1, L), False),
        ((1, 1, L), (1, 1, D), False),
        ((1, 1, A), (1, 1, A), False),
    ],
)
def test_precedence(old: tuple[int, int, State], new: tuple[int, int, State], wins: bool) -> None:
    assert supersedes(upd(*new), member(*old)) is wins


def table(cfg: GossipConfig | None = None) -> Membership:
    return Membership(Member("me", "http://me", 7, 0, A, 0.0), cfg or GossipConfig())


def test_apply_reports_only_news() -> None:
    m = table()
    assert m.apply(upd(1, 0, A), 1.0) == upd(1, 0, A)
    assert m.apply(upd(1, 0, A), 2.0) is None
    assert m.apply(upd(1, 0, S, "y"), 3.0) is not None
    got = m.get("x")
    assert got is not None and got.state == S and got.state_since == 3.0


def test_refutes_suspicion_with_higher_incarnation() -> None:
    m = table()
    out = m.apply(MemberUpdate("me", "http://me", 7, 0, S, "y"), 1.0)
    assert out == MemberUpdate("me", "http://me", 7, 1, A)
    assert m.me.incarnation == 1 and m.me.state == A
    # a stale suspicion (lower incarnation) needs no refutation
    assert m.apply(MemberUpdate("me", "http://me", 7, 0, S, "z"), 2.0) is None
    # claims about an older process with our id are ignored
    assert m.apply(MemberUpdate("me", "http://me", 6, 9, D), 2.0) is None


def test_dead_tombstone_blocks_resurrection_then_is_forgotten() -> None:
    cfg = GossipConfig(tombstone_ttl=10.0)
    m = table(cfg)
    m.apply(upd(1, 3, D), 0.0)
    assert m.apply(upd(1, 3, A), 1.0) is None  # stale alive gossip
    assert m.live_peers() == []
    m.expire(9.0)
    assert m.get("x") is not None
    m.expire(10.5)
    assert m.get("x") is None


def test_restart_replaces_dead_entry() -> None:
    m = table()
    m.apply(upd(1, 3, D), 0.0)
    assert m.apply(upd(2, 0, A), 1.0) is not None
    got = m.get("x")
    assert got is not None and (got.generation, got.state) == (2, A)


def test_suspicion_timeout_formula_and_lifeguard_shrink() -> None:
    cfg = GossipConfig()
    start, low = cfg.suspicion_bounds(100)
    assert start == pytest.approx(4 * 2 * 0.5) and low == pytest.approx(2 * 2 * 0.5)
    assert cfg.suspicion_bounds(3) == (pytest.approx(2.0), pytest.approx(1.0))  # log10 floor 1
    times = [cfg.suspicion_timeout(100, c) for c in range(5)]
    assert times[0] == pytest.approx(start)
    assert times == sorted(times, reverse=True)
    assert times[3] == pytest.approx(low) and times[4] == pytest.approx(low)
    assert cfg.suspicion_timeout(100, 1) == pytest.approx(
        start - (start - low) * math.log(2) / math.log(4)
    )


def test_suspect_expires_to_dead_and_confirmations_shorten_it() -> None:
    m = table()
    m.apply(upd(1, 0, A), 0.0)
    assert m.suspect("x", 10.0) is not None
    start, _ = m.config.suspicion_bounds(2)
    assert m.suspicion_deadline("x") == pytest.approx(10.0 + start)
    assert m.apply(upd(1, 0, S, "y"), 10.1) is not None  # independent confirmation
    assert m.apply(upd(1, 0, S, "y"), 10.2) is None  # same suspecter: no news
    deadline = m.suspicion_deadline("x")
    assert deadline is not None and deadline < 10.0 + start
    assert m.expire(deadline - 0.01) == []
    dead = m.expire(deadline)
    assert [u.state for u in dead] == [D]
    assert m.live_count() == 1


def test_refuted_suspicion_cancels_timer() -> None:
    m = table()
    m.apply(upd(1, 0, A), 0.0)
    m.suspect("x", 1.0)
    m.apply(upd(1, 1, A), 1.5)
    assert m.next_deadline() is None
    assert m.expire(100.0) == []


def test_leave_announces_left_with_higher_incarnation() -> None:
    m = table()
    u = m.leave(3.0)
    assert (u.state, u.incarnation) == (L, 1)
    assert m.live_count() == 0


def test_config_validation_and_presets() -> None:
    with pytest.raises(ValueError):
        GossipConfig(probe_timeout=1.0, probe_interval=0.5)
    local, lan = GossipConfig.local(), GossipConfig.lan()
    assert local.probe_interval < lan.probe_interval < 1.0  # faster than memberlist LAN
    assert lan.retransmit_limit(10) == 8
