"""The session directory: per-origin versioned maps, exchanged Scuttlebutt-style.

Every node (an *origin*) is the only writer of its own entries. Keys name what the node owns:

* ``e:<sid>``                 an Engine.IO session (:func:`engineio_key`)
* ``s:<namespace>:<sid>``     a Socket.IO session in a namespace (:func:`socketio_key`)
* ``r:<namespace>:<room>:<sid>`` room membership (:func:`room_key`)

Namespaces must not contain ``:`` (they are URL paths); rooms may contain anything.

Versions. Each write by an origin takes the next integer version of that origin (per
generation: a restarted process starts a new generation and replaces all of its old entries).
A replica remembers which version ranges of each origin it has *covered* (received everything
the sender held in that range); its watermark is the end of the covered range starting at 0.

Merge rules (:meth:`Directory.apply`), which make apply idempotent and commutative:

* a higher generation replaces the origin's state; a lower one is ignored;
* per key, the higher version wins;
* an entry for a key we do not hold, whose version we already cover, is stale (the key was
  overwritten or deleted and its tombstone collected since) and is ignored;
* tombstones are collected ``tombstone_ttl`` after they were learned; the highest collected
  version is the origin's ``gc_floor``. A peer whose watermark *and* floor are below our floor
  may still hold keys whose deletion it can no longer learn, so it gets a *reset* (chitchat):
  it drops the origin and restarts from the reset's entries, adopting our floor.

Memory layout (goal: < 200 bytes per entry at 10^6 entries): per origin, ``live`` maps a key to
its version (an ``int``) when the value is ``""`` -- the common case, sids carry no value -- or
to ``(value, version)``; tombstones live apart with the time they were learned. There is no
per-entry version index: deltas come from a bounded log of recent writes when the peer is
close behind (the usual case) and from a full scan of the origin otherwise.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from siomesh.protocol.messages import DigestItem, Entry, OriginDelta, json_str_len

__all__ = [
    "MOVED",
    "Digest",
    "Directory",
    "engineio_key",
    "entry_wire_size",
    "room_key",
    "socketio_key",
]

# origin -> (generation, max_version, gc_floor)
Digest = dict[str, tuple[int, int, int]]

#: Value of an Engine.IO entry whose origin handed the session to another member (upgrade
#: takeover) and still forwards to it; deleted once the new owner's entry had time to spread.
MOVED = "m"

_LOG_KEEP = 4096  # recent writes kept per origin for cheap deltas
_DELTA_OVERHEAD = 80  # bytes of an OriginDelta's envelope around its entries (3 ints + flags)


def engineio_key(sid: str) -> str:
    return "e:" + sid


def socketio_key(namespace: str, sid: str) -> str:
    return f"s:{namespace}:{sid}"


def room_key(namespace: str, room: str, sid: str) -> str:
    return f"r:{namespace}:{room}:{sid}"


def entry_wire_size(key: str, value: str, version: int) -> int:
    """Bytes the codec spends on one entry inside a delta (``["k","v",7,false],``)."""
    return json_str_len(key) + json_str_len(value) + len(str(version)) + 11


@dataclass(frozen=True, slots=True)
class _Parsed:
    kind: str  # "e", "s", "r" or "" for other keys
    namespace: str = ""
    room: str = ""


def _parse(key: str) -> _Parsed:
    tag = key[:2]
    if tag == "e:":
        return _Parsed("e")
    if tag == "s:":
        ns, sep, _sid = key[2:].rpartition(":")
        return _Parsed("s", ns) if sep else _Parsed("")
    if tag == "r:":
        ns, sep, rest = key[2:].partition(":")
        room, sep2, _sid = rest.rpartition(":")
        return _Parsed("r", ns, room) if sep and sep2 else _Parsed("")
    return _Parsed("")


class _Origin:
    """One origin's replica: entries, covered version ranges, indexes."""

    __slots__ = (
        "engine_count",
        "gc_floor",
        "generation",
        "live",
        "log",
        "log_floor",
        "ns_counts",
        "ranges",
        "rooms",
        "tombs",
    )

    def __init__(self, generation: int, gc_floor: int = 0) -> None:
        self.generation = generation
        self.gc_floor = gc_floor
        self.live: dict[str, int | tuple[str, int]] = {}
        self.tombs: dict[str, tuple[int, float]] = {}
        self.ranges: list[tuple[int, int]] = []  # sorted, disjoint, non-touching (lo, hi]
        self.log: list[tuple[int, str]] = []
        self.log_floor = 0  # versions <= log_floor may be missing from the log
        self.engine_count = 0
        self.ns_counts: dict[str, int] = {}
        self.rooms: dict[tuple[str, str], int] = {}

    @property
    def watermark(self) -> int:
        r = self.ranges
        return r[0][1] if r and r[0][0] == 0 else 0

    def covers(self, version: int) -> bool:
        return any(lo < version <= hi for lo, hi in self.ranges)

    def cover(self, lo: int, hi: int) -> bool:
        """Add (lo, hi] to the covered ranges; return whether coverage grew."""
        if hi <= lo:
            return False
        before = sum(h - lo_ for lo_, h in self.ranges)
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self.ranges, (lo, hi)]):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.ranges = merged
        return sum(h - lo_ for lo_, h in merged) > before

    def version_of(self, key: str) -> int | None:
        v = self.live.get(key)
        if v is not None:
            return v if isinstance(v, int) else v[1]
        t = self.tombs.get(key)
        return None if t is None else t[0]

    def _index(self, key: str, delta: int) -> None:
        p = _parse(key)
        if p.kind == "e":
            self.engine_count += delta
        elif p.kind == "s":
            n = self.ns_counts.get(p.namespace, 0) + delta
            if n:
                self.ns_counts[p.namespace] = n
            else:
                self.ns_counts.pop(p.namespace, None)
        elif p.kind == "r":
            rk = (p.namespace, p.room)
            n = self.rooms.get(rk, 0) + delta
            if n:
                self.rooms[rk] = n
            else:
                self.rooms.pop(rk, None)

    def write(self, key: str, value: str, version: int, deleted: bool, now: float) -> None:
        was_live = key in self.live
        if deleted:
            if was_live:
                del self.live[key]
                self._index(key, -1)
            self.tombs[key] = (version, now)
        else:
            self.tombs.pop(key, None)
            self.live[key] = version if value == "" else (value, version)
            if not was_live:
                self._index(key, +1)
        self.log.append((version, key))
        if len(self.log) > 2 * _LOG_KEEP:
            self.log.sort()
            self.log_floor = max(self.log_floor, self.log[-_LOG_KEEP - 1][0])
            del self.log[:-_LOG_KEEP]

    def entry(self, key: str) -> Entry | None:
        v = self.live.get(key)
        if v is not None:
            return Entry(key, "", v) if isinstance(v, int) else Entry(key, v[0], v[1])
        t = self.tombs.get(key)
        return None if t is None else Entry(key, "", t[0], True)

    def since(self, after: int, upto: int) -> list[tuple[int, str]]:
        """(version, key) of stored entries with after < version <= upto, by version."""
        if after >= self.log_floor:
            seen: set[str] = set()
            out = []
            for v, k in self.log:
                if after < v <= upto and k not in seen and self.version_of(k) == v:
                    seen.add(k)
                    out.append((v, k))
        else:
            out = [(v, k) for k in self.live if after < (v := self.version_of(k) or 0) <= upto]
            out += [(t[0], k) for k, t in self.tombs.items() if after < t[0] <= upto]
        out.sort()
        return out


class Directory:
    """Replicated session directory of one node (see the module docstring for the rules).

    ``origin`` / ``generation`` identify the local writer. All methods are synchronous and
    O(changes) except the documented scans. Not thread-safe: the runtime owns it from one task.
    """

    def __init__(self, origin: str, generation: int, tombstone_ttl: float = 60.0) -> None:
        self.origin = origin
        self.generation = generation
        self.tombstone_ttl = tombstone_ttl
        self._origins: dict[str, _Origin] = {origin: _Origin(generation)}
        self._dropped: dict[str, tuple[int, float]] = {}  # origin -> (generation, since)

    # ------------------------------------------------------------------ own writes

    @property
    def _own(self) -> _Origin:
        return self._origins[self.origin]

    def set(self, key: str, value: str = "") -> int:
        """Write ``key`` on our own origin; return its new version."""
        own = self._own
        version = own.watermark + 1
        own.ranges = [(0, version)]
        own.write(key, value, version, False, 0.0)
        return version

    def delete(self, key: str, now: float) -> int | None:
        """Tombstone our own ``key``; return the version, or ``None`` if it was not live."""
        own = self._own
        if key not in own.live:
            return None
        version = own.watermark + 1
        own.ranges = [(0, version)]
        own.write(key, "", version, True, now)
        return version

    # ------------------------------------------------------------------ exchange

    def digest(self) -> Digest:
        """``{origin: (generation, max_version, gc_floor)}`` for every origin held."""
        return {o: (s.generation, s.watermark, s.gc_floor) for o, s in self._origins.items()}

    def digest_items(self) -> tuple[DigestItem, ...]:
        """The digest in wire form."""
        return tuple((o, g, w, f) for o, (g, w, f) in self.digest().items())

    def max_version(self, origin: str) -> int:
        s = self._origins.get(origin)
        return 0 if s is None else s.watermark

    def delta(self, peer: Mapping[str, tuple[int, int, int]], budget: int) -> list[OriginDelta]:
        """What a peer with digest ``peer`` lacks, within about ``budget`` encoded bytes.

        Origins the peer is least behind on go first, so one huge origin cannot starve the
        rest; each origin's entries go in version order and a cut one resumes next time.
        """
        plans: list[tuple[int, str, int, bool]] = []  # (lag, origin, after, reset)
        for o, s in self._origins.items():
            w = s.watermark
            p = peer.get(o)
            if p is None or p[0] < s.generation:
                if w or p is not None:
                    plans.append((w, o, 0, True))
            elif p[0] == s.generation and p[1] < w:
                reset = p[1] < s.gc_floor and p[2] < s.gc_floor
                after = 0 if reset else p[1]
                plans.append((w - after, o, after, reset))
        plans.sort()
        out: list[OriginDelta] = []
        for _lag, o, after, reset in plans:
            s = self._origins[o]
            d = self._build(o, s, after, s.watermark, reset, budget)
            if d is None:
                break
            budget -= delta_wire_size(d)
            out.append(d)
            if d.to_version < s.watermark:
                break  # budget exhausted mid-origin
        return out

    def delta_range(self, origin: str, after: int, upto: int, budget: int) -> OriginDelta | None:
        """Entries of ``origin`` in ``(after, upto]`` for an eager push (None if nothing fits)."""
        s = self._origins.get(origin)
        if s is None or upto <= after:
            return None
        return self._build(origin, s, after, min(upto, max(s.watermark, upto)), False, budget)

    def _build(
        self, o: str, s: _Origin, after: int, upto: int, reset: bool, budget: int
    ) -> OriginDelta | None:
        budget -= _DELTA_OVERHEAD + json_str_len(o)
        entries: list[Entry] = []
        to = upto
        for _v, k in s.since(after, upto):
            e = s.entry(k)
            if e is None:  # unreachable: since() lists stored keys only
                continue
            size = entry_wire_size(e.key, e.value, e.version)
            if size > budget:
                to = entries[-1].version if entries else after
                break
            budget -= size
            entries.append(e)
        if to <= after and not reset:
            return None
        return OriginDelta(o, s.generation, after, to, reset, s.gc_floor, tuple(entries))

    def apply(self, deltas: Iterable[OriginDelta], now: float) -> list[OriginDelta]:
        """Merge deltas; return those that taught us something (for onward relay).

        Idempotent and commutative (module docstring). ``now`` stamps learned tombstones.
        """
        return [d for d in deltas if self._apply_one(d, now)]

    def _apply_one(self, d: OriginDelta, now: float) -> bool:
        if d.origin == self.origin:
            return False  # we are the only writer of our own origin
        dropped = self._dropped.get(d.origin)
        if dropped is not None and d.generation <= dropped[0]:
            return False
        s = self._origins.get(d.origin)
        if s is None or d.generation > s.generation:
            s = self._origins[d.origin] = _Origin(d.generation, d.gc_floor)
        elif d.generation < s.generation:
            return False
        elif d.reset and s.watermark < d.gc_floor and s.gc_floor < d.gc_floor:
            s = self._origins[d.origin] = _Origin(d.generation, d.gc_floor)
        changed = False
        for e in d.entries:
            cur = s.version_of(e.key)
            if cur is None:
                if s.covers(e.version):
                    continue
            elif e.version <= cur:
                continue
            s.write(e.key, e.value, e.version, e.deleted, now)
            changed = True
        return s.cover(d.from_version, d.to_version) or changed

    # ------------------------------------------------------------------ lifecycle

    def drop_origin(self, origin: str, generation: int, now: float) -> None:
        """Forget ``origin``'s entries of ``generation`` and older, and refuse them from now
        on (the member died, left, or restarted). Our own origin cannot be dropped."""
        if origin == self.origin:
            return
        s = self._origins.get(origin)
        if s is not None and s.generation <= generation:
            del self._origins[origin]
        prev = self._dropped.get(origin)
        if prev is None or prev[0] <= generation:
            self._dropped[origin] = (generation, now)

    def revive_origin(self, origin: str, generation: int) -> None:
        """Accept ``origin``'s entries of ``generation`` again: a member declared dead refuted
        it (a healed partition), so the drop was a false positive. Anti-entropy refills it."""
        d = self._dropped.get(origin)
        if d is not None and d[0] == generation:  # an older generation stays dropped
            del self._dropped[origin]

    def gc(self, now: float) -> None:
        """Collect tombstones and drop records older than ``tombstone_ttl``. O(tombstones)."""
        ttl = self.tombstone_ttl
        for s in self._origins.values():
            old = [(k, t[0]) for k, t in s.tombs.items() if now - t[1] >= ttl]
            for k, v in old:
                del s.tombs[k]
                s.gc_floor = max(s.gc_floor, v)
        for o, (_g, since) in list(self._dropped.items()):
            if now - since >= ttl:
                del self._dropped[o]

    # ------------------------------------------------------------------ queries

    def origins(self) -> list[str]:
        return list(self._origins)

    def generation_of(self, origin: str) -> int | None:
        s = self._origins.get(origin)
        return None if s is None else s.generation

    def get(self, origin: str, key: str) -> str | None:
        """The live value of ``key`` written by ``origin``, or ``None``."""
        s = self._origins.get(origin)
        v = None if s is None else s.live.get(key)
        if v is None:
            return None
        return "" if isinstance(v, int) else v[0]

    def owner_of_engineio_sid(self, sid: str) -> str | None:
        """The origin holding Engine.IO session ``sid`` live. O(origins). An entry whose value
        is :data:`MOVED` (its origin handed the session to another member and forwards to it
        for a while) loses to any other origin's live entry."""
        key = engineio_key(sid)
        moved: str | None = None
        for o, s in self._origins.items():
            v = s.live.get(key)
            if v is None:
                continue
            if isinstance(v, tuple) and v[0] == MOVED:
                moved = o
                continue
            return o
        return moved

    def is_tombstoned(self, key: str) -> bool:
        """True when some origin deleted ``key`` (and the tombstone is not yet collected)."""
        return any(key in s.tombs for s in self._origins.values())

    def owners_of_room(self, namespace: str, room: str) -> builtins.set[str]:
        """Origins with at least one member of ``room`` in ``namespace``. O(origins)."""
        rk = (namespace, room)
        return {o for o, s in self._origins.items() if rk in s.rooms}

    def engineio_count(self, origin: str) -> int:
        s = self._origins.get(origin)
        return 0 if s is None else s.engine_count

    def socketio_count(self, origin: str, namespace: str) -> int:
        s = self._origins.get(origin)
        return 0 if s is None else s.ns_counts.get(namespace, 0)

    def namespace_sids(self, origin: str, namespace: str) -> list[str]:
        """Socket.IO sids of ``origin`` in ``namespace``. Scans the origin: O(its entries)."""
        s = self._origins.get(origin)
        if s is None:
            return []
        prefix = f"s:{namespace}:"
        n = len(prefix)
        return [k[n:] for k in s.live if k.startswith(prefix) and ":" not in k[n:]]

    def origin_size(self, origin: str) -> int:
        """Live entries of ``origin``. O(1)."""
        s = self._origins.get(origin)
        return 0 if s is None else len(s.live)

    def entry_count(self) -> int:
        """Live entries plus tombstones, all origins."""
        return sum(len(s.live) + len(s.tombs) for s in self._origins.values())

    def items(self, origin: str) -> Iterator[Entry]:
        """Every stored entry of ``origin`` (live and tombstones), unordered."""
        s = self._origins.get(origin)
        if s is None:
            return
        for k in [*s.live, *s.tombs]:
            e = s.entry(k)
            if e is not None:
                yield e

    def snapshot(self) -> dict[str, tuple[int, dict[str, tuple[str, int, bool]]]]:
        """Comparable copy of the whole state: origin -> (generation, key -> entry)."""
        return {
            o: (s.generation, {e.key: (e.value, e.version, e.deleted) for e in self.items(o)})
            for o, s in self._origins.items()
        }


def delta_wire_size(d: OriginDelta) -> int:
    """Upper estimate of the bytes ``d`` takes in an encoded message."""
    return (
        _DELTA_OVERHEAD
        + json_str_len(d.origin)
        + sum(entry_wire_size(e.key, e.value, e.version) for e in d.entries)
    )
