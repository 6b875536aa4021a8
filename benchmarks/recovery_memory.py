"""What connection state recovery holds in memory: per disconnected session kept, and per event
logged, measured with tracemalloc on the structures :mod:`siomesh.recovery` keeps (a session's
record with its rooms and ``data``; a log entry with its offset, target and arguments, indexed
by offset).

Usage: ``python benchmarks/recovery_memory.py [--sessions N] [--events M] [--payload BYTES]``.
Prints bytes per session and per event, and what the defaults' bounds
(``RecoveryConfig.max_sessions`` sessions, ``max_log`` events) cost at most with that payload.
"""

from __future__ import annotations

import argparse
import gc
import secrets
import tracemalloc

from siomesh.config import RecoveryConfig
from siomesh.recovery import Entry, Kept, Log


def _sid() -> str:
    return secrets.token_urlsafe(21)[:28]


def per_event(count: int, payload: int) -> float:
    """Bytes per logged room broadcast ``["b", [tag, i, t, text]]`` with ``payload`` bytes of
    text, in a Log (deque + offset index)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    log = Log(max_entries=count + 1, max_age=1e9)
    for i in range(count):
        offset = f"AbCdEfGh.{i}"
        text = str(i).ljust(payload, "x")  # a string of its own, as a real payload is
        log.add(Entry(offset, "/", "room", (), "b", ["tag", i, 1.5, text, offset], float(i)))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(log.entries) == count
    return used / count


def per_session(count: int) -> float:
    """Bytes per disconnected session kept: its record (pid, sid, namespace, two rooms, a small
    ``data`` dict), in the pid -> record map; the node's log is shared, not counted here."""
    shared = Log(max_entries=10, max_age=1.0)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept: dict[str, Kept] = {}
    for i in range(count):
        pid, sid = _sid(), _sid()
        kept[pid] = Kept(pid, sid, "/", [sid, "room"], {"user": f"u{i}"}, 120.0, shared)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(kept) == count
    return used / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--payload", type=int, default=100, help="bytes of text per event")
    args = parser.parse_args()
    defaults = RecoveryConfig()
    session = per_session(args.sessions)
    event = per_event(args.events, args.payload)
    print(f"per disconnected session kept: {session:,.0f} bytes ({args.sessions:,} measured)")
    print(f"per logged event ({args.payload} bytes of text): {event:,.0f} bytes")
    print(
        f"at the default bounds ({defaults.max_sessions:,} sessions, {defaults.max_log:,} "
        f"events): at most {defaults.max_sessions * session / 2**20:,.1f} MiB + "
        f"{defaults.max_log * event / 2**20:,.1f} MiB per node"
    )


if __name__ == "__main__":
    main()
