"""The adapter ordering tests' app (tests/integration/test_adapter_order.py): the adapter test
app (:mod:`tests.apps.adapter_app`, whose events it keeps) plus ``shout``, and a knob that makes
this node apply its peers' messages late, as a loaded node does.

* ``shout`` ``{"k", "to", "mode", "bytes"}``: ``mode`` ``"emit"`` (default):
  ``await sio.emit("shout", data, to=to)``, ``to`` a room, a sid or a list of them; ``"call"``:
  ``await sio.call("shout", data, to=sid)`` for each sid of ``to`` at once, and the answers are
  its ack. ``data`` is ``k``, or ``[k, <k as 4 bytes>]`` with ``"bytes": true``. Acks ``True``
  (``emit``) once the emit returned.

Environment: ``ORDER_APPLY_DELAY`` (seconds, default 0) delays every ``emit`` message this node
applies from the peers whose URLs are listed in ``ORDER_APPLY_DELAY_FROM`` (comma separated; all
peers when unset), before it is delivered to this node's clients.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from tests.apps.adapter_app import app, sio

__all__ = ["app", "sio"]

_DELAY = float(os.environ.get("ORDER_APPLY_DELAY", "0") or 0)
_FROM = {u.strip() for u in os.environ.get("ORDER_APPLY_DELAY_FROM", "").split(",") if u.strip()}


def _payload(spec: dict[str, Any]) -> Any:
    k = int(spec["k"])
    return [k, k.to_bytes(4, "big")] if spec.get("bytes") else k


@sio.on("shout")  # type: ignore[untyped-decorator]
async def shout(sid: str, spec: dict[str, Any]) -> Any:
    data = _payload(spec)
    to = spec["to"]
    if spec.get("mode") == "call":
        targets = to if isinstance(to, list) else [to]
        return list(
            await asyncio.gather(*(sio.call("shout", data, to=t, timeout=10) for t in targets))
        )
    await sio.emit("shout", data, to=to)
    return True


if _DELAY > 0 and app.adapter is not None:
    manager = app.adapter
    dispatch = manager._inbound.dispatch

    async def _late_dispatch(msg: dict[str, Any], sender: str) -> None:
        if msg.get("m") == "emit" and (not _FROM or sender in _FROM):
            await asyncio.sleep(_DELAY)
        await dispatch(msg, sender)

    manager._inbound.dispatch = _late_dispatch  # type: ignore[method-assign]
