"""The events both bench apps answer, so that every setup serves the same workload.

* ``echo`` (acks its argument back), ``whoami`` (acks the node URL);
* ``connects``: acks how many times this node's ``connect`` handler ran (a session's handler
  must run exactly once in the cluster: the takeover tests sum it over the nodes);
* ``join`` ``room`` (acks ``True`` once the sender is in it);
* ``broadcast`` ``{"room", "tag", "count", "interval", "start"}``: ``count`` emits of ``b``
  ``[tag, i, t]`` to ``room``, ``i`` from ``start`` (default 0) on (``t``:
  ``time.monotonic()`` at the emit, which client processes on the same machine compare with
  their own clock), ``interval`` seconds apart; acks ``count`` after the last one (each emit
  awaited: with the mesh adapter, once every node has it).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

__all__ = ["register"]

#: The most broadcasts one ``broadcast`` event may ask for.
MAX_BROADCASTS = 100_000


def register(sio: Any, node: str) -> None:
    """Add the bench events to the python-socketio ``AsyncServer`` ``sio``."""

    connects = 0

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        nonlocal connects
        connects += 1

    async def connects_(sid: str) -> int:
        return connects

    async def echo(sid: str, data: Any) -> Any:
        return data

    async def whoami(sid: str) -> str:
        return node

    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    async def broadcast(sid: str, spec: dict[str, Any]) -> int:
        room, tag = spec.get("room"), str(spec.get("tag", ""))
        count = max(0, min(int(spec.get("count", 1)), MAX_BROADCASTS))
        interval = max(0.0, float(spec.get("interval", 0.0)))
        start = max(0, int(spec.get("start", 0)))
        for i in range(start, start + count):
            await sio.emit("b", [tag, i, time.monotonic()], to=room)
            if interval:
                await asyncio.sleep(interval)
        return count

    for handler in (connect, echo, whoami, join, broadcast):
        sio.on(handler.__name__, handler)
    sio.on("connects", connects_)
