"""``siomesh drain URL``: ask a node to drain now (a Kubernetes preStop hook, a deploy script).

The request is authenticated the only way peers are: the command dials a control link to the
node with the cluster secret (``--secret`` or ``SIOMESH_SECRET``) and sends one call; the node
drains (:meth:`MeshNode.drain <siomesh.node.MeshNode.drain>`) and answers when it is done. No
HTTP endpoint exists for it, so nothing but a secret holder can drain a node. Bounded by
``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from .config import normalize_url
from .links.calls import CallFailed
from .links.pool import LinkPool, LinkUnavailable
from .node import NODE_DRAIN_CALL

__all__ = ["drain_node"]


async def drain_node(url: str, secret: str, *, mesh_path: str, timeout: float) -> dict[str, Any]:
    """Drain the node at ``url``; its answer (``node``, ``state``, ``drained_sessions``).
    Raises :class:`LinkUnavailable` (refused, unreachable) or :class:`TimeoutError`."""
    target = normalize_url(url, option="url")
    pool = LinkPool(
        # the command is not a member: a name that no node can be at, unique per run
        node_url=f"http://siomesh-drain-{secrets.token_hex(4)}.invalid:1",
        generation=time.time_ns(),
        secret=secret,
        mesh_path=mesh_path,
        connect_timeout=min(5.0, timeout),
        handshake_timeout=min(5.0, timeout),
        heartbeat=30.0,
        window=30.0,
        max_buffer=1 << 20,
        max_frame=1 << 20,
    )
    try:
        await asyncio.wait_for(pool.get(target, "control"), timeout)
        try:
            payload = await pool.calls.call(target, NODE_DRAIN_CALL, timeout=timeout)
        except CallFailed as exc:
            raise LinkUnavailable(f"{target}: {exc}") from exc
        answer: dict[str, Any] = json.loads(payload)
        return answer
    finally:
        await pool.close()
