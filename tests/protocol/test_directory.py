"""Directory: Scuttlebutt merge is idempotent and commutative; exchange converges."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from siomesh.protocol.directory import (
    MOVED,
    Directory,
    delta_wire_size,
    engineio_key,
    room_key,
    socketio_key,
)
from siomesh.protocol.messages import OriginDelta

BIG = 10**7
keys = st.sampled_from([engineio_key(c) for c in "abcdef"] + [room_key("/", "r", "a")])
ops = st.lists(st.tuples(st.booleans(), keys, st.sampled_from(["", "v", "w"])), max_size=30)


def run_history(
    origin: str, history: list[tuple[bool, str, str]]
) -> tuple[Directory, list[OriginDelta]]:
    """Play ``history`` on a fresh origin; collect one push delta per op plus cut deltas."""
    src = Directory(origin, 1)
    out: list[OriginDelta] = []
    for is_set, key, value in history:
        before = src.max_version(origin)
        if is_set:
            src.set(key, value)
        else:
            src.delete(key, 0.0)
        d = src.delta_range(origin, before, src.max_version(origin), BIG)
        if d is not None:
            out.append(d)
        # a budget-cut full delta, as anti-entropy would send to an empty peer
        out.extend(src.delta({}, 200))
    out.extend(src.delta({}, BIG))
    return src, out


@given(ops, ops, st.randoms(use_true_random=False), st.integers(0, 3))
@settings(max_examples=150, deadline=None)
def test_apply_any_order_any_repetition_converges(
    h1: list[tuple[bool, str, str]], h2: list[tuple[bool, str, str]], rnd: object, dups: int
) -> None:
    a, da = run_history("A", h1)
    b, db = run_history("B", h2)
    deltas = da + db
    r1, r2 = Directory("R1", 1), Directory("R2", 1)
    r1.apply(deltas, 0.0)
    shuffled = deltas * (dups + 1)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    for d in shuffled:
        r2.apply([d], 0.0)
    want = {"A": a.snapshot()["A"], "B": b.snapshot()["B"]}
    for r in (r1, r2):
        snap = r.snapshot()
        assert {o: snap[o] for o in ("A", "B") if o in snap} == {
            o: want[o] for o in ("A", "B") if want[o][1] or o in snap
        }
        assert r.digest()["A"][1] == a.max_version("A") if "A" in r.digest() else True


def exchange(x: Directory, y: Directory, budget: int) -> int:
    """One Syn/SynAck/Ack2 round between x and y; return entries moved."""
    to_x = y.delta(x.digest(), budget)
    x.apply(to_x, 0.0)
    to_y = x.delta(y.digest(), budget)
    y.apply(to_y, 0.0)
    return sum(len(d.entries) for d in to_x + to_y) + len(to_x) + len(to_y)


@given(ops, ops, st.integers(300, 3000))
@settings(max_examples=100, deadline=None)
def test_digest_delta_round_trips_make_directories_equal(
    h1: list[tuple[bool, str, str]], h2: list[tuple[bool, str, str]], budget: int
) -> None:
    x, _ = run_history("X", h1)
    y, _ = run_history("Y", h2)
    for _ in range(200):
        if not exchange(x, y, budget):
            break

    def known(d: Directory) -> tuple[object, object]:
        # an origin that never wrote anything (version 0) has nothing to tell
        snap = {o: v for o, v in d.snapshot().items() if d.max_version(o)}
        return snap, {o: v for o, v in d.digest().items() if v[1]}

    assert known(x) == known(y)
    for d in y.delta(x.digest(), budget) + x.delta(y.digest(), budget):
        assert delta_wire_size(d) <= budget


@given(
    st.lists(st.tuples(st.sampled_from("ABC"), st.text("abc", min_size=1, max_size=3)), max_size=30)
)
@settings(max_examples=100, deadline=None)
def test_every_sid_has_one_owner(creates: list[tuple[str, str]]) -> None:
    dirs = {o: Directory(o, 1) for o in "ABC"}
    owner: dict[str, str] = {}
    for o, sid in creates:
        if sid in owner:  # sids are unique by construction (random bits); skip repeats
            continue
        owner[sid] = o
        dirs[o].set(engineio_key(sid))
    r = Directory("R", 1)
    for d in dirs.values():
        r.apply(d.delta({}, BIG), 0.0)
    for sid, o in owner.items():
        assert r.owner_of_engineio_sid(sid) == o
        assert sum(r.get(x, engineio_key(sid)) is not None for x in "ABC") == 1


def test_a_moved_entry_loses_to_the_new_owners_entry() -> None:
    """Upgrade takeover: the old owner keeps its entry marked MOVED while the new owner adds
    its own; whatever the order peers learn them in, the new owner wins, and the old owner is
    still named while it is the only one known (it forwards)."""
    a, b = Directory("A", 1), Directory("B", 1)
    a.set(engineio_key("s"))
    a.set(engineio_key("s"), MOVED)
    b.set(engineio_key("s"))
    r = Directory("R", 1)
    r.apply(a.delta({}, BIG), 0.0)
    assert r.owner_of_engineio_sid("s") == "A"
    r.apply(b.delta({}, BIG), 0.0)
    assert r.owner_of_engineio_sid("s") == "B"
    # learned the other way round, too
    r2 = Directory("R2", 1)
    r2.apply(b.delta({}, BIG), 0.0)
    r2.apply(a.delta({}, BIG), 0.0)
    assert r2.owner_of_engineio_sid("s") == "B"


def test_tombstone_gc_forces_reset_of_lagging_peer() -> None:
    src = Directory("A", 1, tombstone_ttl=10)
    lag = Directory("L", 1, tombstone_ttl=10)
    src.set("e:1")
    src.set("e:2")
    lag.apply(src.delta(lag.digest(), BIG), 0.0)
    src.delete("e:1", 1.0)
    src.set("e:3")
    src.gc(20.0)  # tombstone of e:1 collected: lag cannot learn the delete from a delta
    assert not src.is_tombstoned("e:1")
    deltas = src.delta(lag.digest(), BIG)
    assert [d.reset for d in deltas] == [True]
    lag.apply(deltas, 21.0)
    assert lag.snapshot()["A"] == src.snapshot()["A"]
    assert lag.get("A", "e:1") is None


def test_partial_reset_resumes_instead_of_restarting() -> None:
    src = Directory("A", 1, tombstone_ttl=10)
    lag = Directory("L", 1, tombstone_ttl=10)
    src.set("e:gone")
    lag.apply(src.delta(lag.digest(), BIG), 0.0)
    for i in range(300):
        src.set(f"e:{i:04}")
    src.delete("e:gone", 1.0)
    src.gc(20.0)
    rounds = 0
    while deltas := src.delta(lag.digest(), 1000):
        lag.apply(deltas, 21.0)
        rounds += 1
        assert rounds < 100
    assert lag.snapshot()["A"] == src.snapshot()["A"]


def test_higher_generation_replaces_and_dropped_origin_stays_dropped() -> None:
    old, new = Directory("A", 1), Directory("A", 2)
    old.set("e:old")
    new.set("e:new")
    r = Directory("R", 1)
    r.apply(old.delta({}, BIG), 0.0)
    r.apply(new.delta(r.digest(), BIG), 0.0)
    assert r.owner_of_engineio_sid("old") is None
    assert r.owner_of_engineio_sid("new") == "A"
    r.apply(old.delta({}, BIG), 0.0)  # a stale generation is ignored
    assert r.owner_of_engineio_sid("old") is None
    r.drop_origin("A", 2, 5.0)
    assert r.owner_of_engineio_sid("new") is None
    r.apply(new.delta({}, BIG), 6.0)
    assert r.owner_of_engineio_sid("new") is None
    r.gc(100.0)  # the drop record expires with the tombstone bound
    r.apply(new.delta({}, BIG), 100.0)
    assert r.owner_of_engineio_sid("new") == "A"


def test_queries_rooms_namespaces_counts() -> None:
    d = Directory("A", 1)
    d.set(engineio_key("s1"))
    d.set(socketio_key("/chat", "x1"))
    d.set(socketio_key("/chat", "x2"))
    d.set(room_key("/chat", "lobby:1", "x1"))
    r = Directory("R", 1)
    r.set(room_key("/chat", "lobby:1", "y"))
    r.apply(d.delta({}, BIG), 0.0)
    assert r.owners_of_room("/chat", "lobby:1") == {"A", "R"}
    assert r.owners_of_room("/chat", "lobby") == set()
    assert r.engineio_count("A") == 1
    assert r.socketio_count("A", "/chat") == 2
    assert sorted(r.namespace_sids("A", "/chat")) == ["x1", "x2"]
    d.delete(room_key("/chat", "lobby:1", "x1"), 1.0)
    r.apply(d.delta(r.digest(), BIG), 1.0)
    assert r.owners_of_room("/chat", "lobby:1") == {"R"}
    assert r.is_tombstoned(room_key("/chat", "lobby:1", "x1"))


def test_log_and_scan_deltas_agree() -> None:
    src = Directory("A", 1)
    for i in range(10_000):
        src.set(f"e:{i % 7000}")
    near = src.delta({"A": (1, src.max_version("A") - 50, 0)}, BIG)  # from the log
    far = src.delta({"A": (1, 10, 0)}, BIG)  # full scan
    assert [e.version for e in near[0].entries] == list(range(9951, 10_001))
    assert [e.version for e in far[0].entries][-50:] == list(range(9951, 10_001))
    assert len(far[0].entries) == 7000


def test_memory_per_entry_is_small() -> None:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    d = Directory("R", 1)
    src = Directory("A", 1)
    for i in range(20_000):
        src.set(f"e:{i:020d}")
    d.apply(src.delta({}, 10**9), 0.0)
    del src
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert used / 20_000 < 200, used / 20_000
