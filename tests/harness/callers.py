"""A client that calls steadily and logs each call's outcome: what fault tests count as lost
calls (a partition, a frozen node, a restart)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import socketio

__all__ = ["CallLog", "steady_caller"]

#: (when the call ended, ``time.monotonic()``; whether it was answered correctly)
CallLog = list[tuple[float, bool]]


async def steady_caller(
    url: str,
    i: int,
    stop: asyncio.Event,
    log: CallLog,
    *,
    every: float = 0.2,
    sids: list[str] | None = None,
) -> None:
    """A polling-only python-socketio client, reconnecting as users run it, that calls
    ``echo`` every ``every`` seconds until ``stop`` and logs each outcome in ``log``; its
    Engine.IO sid goes to ``sids`` once connected. Every call is bounded (2 s)."""
    client = socketio.AsyncClient(reconnection=True, reconnection_delay=0.2)
    try:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.connect(url, transports=["polling"]), 10)
        if sids is not None and client.connected:
            sids.append(str(client.eio.sid))
        n = 0
        while not stop.is_set():
            n += 1
            try:
                ok = await client.call("echo", {"i": i, "n": n}, timeout=2) == {"i": i, "n": n}
            except Exception:
                ok = False
            log.append((time.monotonic(), ok))
            await asyncio.sleep(every)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 3)
