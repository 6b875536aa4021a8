"""When a draining node drops a session (siomesh.sessions.is_safe_to_drop): only when it is
quiet, and early in its client's rhythm, so that the close reaches the client before it sends
again (a packet crossing the close is lost: neither python-socketio's client nor the JS client
resends it)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from siomesh.sessions import IDLE, is_safe_to_drop


def _socket(last_in: float | None, gap: float | None, calls: int = 0) -> Any:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    return SimpleNamespace(
        queue=queue, siomesh_calls=calls, siomesh_last_in=last_in, siomesh_gap=gap
    )


def test_a_steady_sender_is_dropped_in_the_second_quarter_of_its_beat() -> None:
    """A sender every 40 ms (the rolling-restart test's): dropped 10 to 20 ms after its last
    packet, never in the 20 ms before its next one (it lost an emit at 30 ms, the close
    crossing it on the wire)."""
    sender = _socket(last_in=100.0, gap=0.040)
    allowed = [ms for ms in range(0, 80) if is_safe_to_drop(sender, 100.0 + ms / 1000)]
    assert allowed[0] == 10 and 20 in allowed and 21 not in allowed
    assert all(ms <= 20 or ms >= 80 for ms in allowed)  # 80 ms: it missed two beats


def test_a_quiet_client_goes_at_once_and_a_busy_one_never() -> None:
    assert is_safe_to_drop(_socket(last_in=None, gap=None), 5.0)  # never sent anything
    assert is_safe_to_drop(_socket(last_in=1.0, gap=0.5), 1.0 + IDLE)  # silent for IDLE
    assert not is_safe_to_drop(_socket(last_in=1.0, gap=None), 1.01)  # its first call is due
    assert not is_safe_to_drop(_socket(last_in=1.0, gap=0.2, calls=1), 1.06)  # awaits its ack
    waiting = _socket(last_in=1.0, gap=0.2)
    waiting.queue.put_nowait("a packet for the client")
    assert not is_safe_to_drop(waiting, 1.06)
