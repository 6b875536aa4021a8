"""Startup self-checks: say out loud, in the node's log, what is misconfigured, with the fix.

Run once the server listens (a background task started at lifespan startup):

* **node_url reaches this process.** ``GET {node_url}{health_path}`` a few times: no answer
  means peers cannot reach this node at the URL it advertises (a wrong host or port, a
  container port not published); an answer from another *instance* (a random name each
  process draws) means another process answers at that URL (``uvicorn --workers N`` or
  gunicorn workers sharing one node_url: use ``siomesh run``, which gives each worker its
  own).
* **Seeds.** A configured seed that this node could not link to within ``SEED_GRACE`` seconds is
  named with the dial's error (refused, unresolvable, timed out, or refused our offer).

Each finding is one WARNING (rate-limited by :class:`~siomesh.ratelimit.RateLimitedLog`) and a
counter. Every wait is bounded. Nothing here changes how the node behaves.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

import aiohttp

from .ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from .node import MeshNode

__all__ = ["self_checks"]

log = logging.getLogger("siomesh")

PROBES = 5
PROBE_GAP = 0.3
SEED_GRACE = 5.0
SEED_RECHECK = 30.0


async def self_checks(node: MeshNode, warn: RateLimitedLog) -> None:
    """Run the checks of the module docstring; returns after the first round of seed checks,
    then keeps re-checking seeds every ``SEED_RECHECK`` seconds until cancelled."""
    await asyncio.sleep(0.5)  # the server starts listening right after lifespan startup
    await _check_node_url(node, warn)
    await asyncio.sleep(max(0.0, SEED_GRACE - 0.5 - PROBES * PROBE_GAP))
    while True:
        _check_seeds(node, warn)
        await asyncio.sleep(SEED_RECHECK)


async def _check_node_url(node: MeshNode, warn: RateLimitedLog) -> None:
    url = node.config.node_url + node.config.health_path
    instances: set[str] = set()
    errors: list[str] = []
    ssl_context = node.links.ssl_context
    timeout = aiohttp.ClientTimeout(total=2.0)
    # a fresh connection per probe: behind one shared socket, several processes may answer
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)
    ) as http:
        for _ in range(PROBES):
            try:
                async with http.get(url, ssl=ssl_context if ssl_context else True) as response:
                    data = json.loads(await response.read())
                    instances.add(str(data.get("instance")))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
                errors.append(repr(exc))
            await asyncio.sleep(PROBE_GAP)
    others = instances - {node.instance}
    if node.instance not in instances and not others:
        node.stats.set("selfcheck_node_url_unreachable", 1)
        warn.warning(
            ("node_url",),
            "node_url %s does not reach this process (%s): peers forward to it and cannot. "
            "Set SIOMESH_NODE_URL (node_url=) to the address other nodes reach this process at",
            node.config.node_url,
            errors[-1] if errors else "no answer",
        )
    elif others:
        node.stats.set("selfcheck_node_url_shared", 1)
        warn.warning(
            ("node_url-shared",),
            "another process answers at node_url %s (instances %s besides this one, %s): several "
            "processes claim one node_url, e.g. `uvicorn --workers N` or gunicorn workers. "
            "Sessions of the others cannot be routed. Run one process per node_url, or use "
            "`siomesh run APP --workers N`, which gives each worker its own",
            node.config.node_url,
            sorted(others),
            node.instance,
        )


def _check_seeds(node: MeshNode, warn: RateLimitedLog) -> None:
    failing = 0
    for seed in node.config.peers:
        if seed == node.config.node_url or seed.startswith("dns+"):
            continue
        if node.links.current(seed, "control") is not None:
            continue
        error = node.links.last_errors.get(seed)
        if error is None:
            continue
        failing += 1
        warn.warning(
            ("seed", seed),
            "seed %s cannot be reached: %s. Check that it runs, that %s is exactly its "
            "node_url, and that this node can connect to it",
            seed,
            error,
            seed,
        )
    node.stats.set("seeds_unreachable", failing)
