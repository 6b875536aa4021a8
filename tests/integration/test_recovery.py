"""Connection state recovery (siomesh.recovery) with the npm ``socket.io-client``, through nginx
round-robin onto 3 nodes with ``SIOMESH_RECOVERY_ENABLED=1``.

Clients in one room receive a paced stream of room broadcasts; some have their transport cut
in the middle (the engine closed without a goodbye, as a dropped network does). They reconnect
to any node and come back recovered (``socket.recovered``), with the same ``socket.id``, still
in the room, and every broadcast arrives exactly once, in order.

A rolling restart (drain, exit, start again, one node at a time) under the same load: every
client recovers each time its node goes, and nothing is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from siomesh.benchkit.procs import Proc
from tests.conftest import require_binary
from tests.e2e import NODE_DIR, node_client
from tests.harness.balancers import Balancer, start_balancer
from tests.harness.nodes import start_node, wait_healthy
from tests.harness.ports import LOOPBACK, free_ports

ENV = {"SIOMESH_GOSSIP_PRESET": "local", "SIOMESH_RECOVERY_ENABLED": "1"}


class Cluster:
    def __init__(self, tmp: Path, urls: list[str], procs: list[Proc], lb: Balancer) -> None:
        self.tmp = tmp
        self.urls = urls
        self.procs = procs
        self.lb = lb

    def stats(self, key: str) -> int:
        total = 0
        for url in self.urls:
            with contextlib.suppress(httpx.HTTPError, KeyError):
                total += int(httpx.get(url + "/_siomesh/status", timeout=5).json()["stats"][key])
        return total


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    require_binary("nginx")
    ports = free_ports(3)
    urls = [f"http://{LOOPBACK}:{p}" for p in ports]
    procs: list[Proc] = []
    lb: Balancer | None = None
    made: Cluster | None = None
    try:
        for index, port in enumerate(ports):
            procs.append(
                start_node(
                    tmp_path,
                    f"node{index}",
                    port,
                    node_url=urls[index],
                    peers=urls,
                    env=ENV,
                    uvicorn_args=(),
                )
            )
        for proc, url in zip(procs, urls, strict=True):
            wait_healthy(url, proc)
        lb = start_balancer("nginx", [u.removeprefix("http://") for u in urls], tmp_path / "lb")
        made = Cluster(tmp_path, urls, procs, lb)
        yield made
    finally:
        if lb is not None:
            lb.stop()
        for proc in made.procs if made is not None else procs:
            proc.stop()


async def _run_clients(
    node: str, url: str, clients: int, cut: int, count: int, interval_ms: int, cuts: int
) -> dict[str, Any]:
    done = await asyncio.to_thread(
        subprocess.run,
        [node, "recovery.js", url, str(clients), str(cut), str(count), str(interval_ms), str(cuts)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=150,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] is None, result
    return result


def _check_everyone(result: dict[str, Any]) -> None:
    """Everyone received the same broadcasts, each once, in order; none is missing."""
    sequences = {tuple(c["got"]) for c in result["per"]}
    assert len(sequences) == 1, [
        (c["index"], c["received"], c["connects"], c["recovered"], c["connected"], c["got"][-3:])
        for c in result["per"]
    ]
    got = list(sequences.pop())
    assert got == sorted(set(got)), got  # once each, in order
    # the sender is never cut here: nothing may be missing
    assert len(got) == result["count"], (len(got), result["count"])
    for client in result["per"]:
        summary = {k: v for k, v in client.items() if k != "got"}
        assert client["connected"], summary
        assert client["offsetsSeen"] == client["received"], summary
        assert len(set(client["ids"])) == 1, client  # the same socket.id throughout
        # every reconnection was a recovery (the first connect is not)
        assert client["recovered"][0] is False, client
        assert all(client["recovered"][1:]), client


async def test_cut_clients_recover_on_any_node_and_miss_nothing(cluster: Cluster) -> None:
    node = node_client()
    result = await _run_clients(node, cluster.lb.url, 12, 6, 80, 40, 2)
    _check_everyone(result)
    victims = [c for c in result["per"] if c["victim"]]
    assert all(c["connects"] == 3 for c in victims), victims  # two cuts each
    assert cluster.stats("recovered") >= len(victims) * 2
    assert cluster.stats("recovery_misses") == 0


async def test_a_rolling_restart_loses_no_broadcast_and_every_client_recovers(
    cluster: Cluster,
) -> None:
    """Every node in turn drains (SIGTERM), exits and starts again on its address, while 8
    clients receive a paced stream of room broadcasts: each client comes back recovered, with
    the same id, every time its node goes, and every broadcast arrives once, in order."""
    node = node_client()
    ports = [int(u.rsplit(":", 1)[1]) for u in cluster.urls]
    clients = asyncio.ensure_future(_run_clients(node, cluster.lb.url, 8, 0, 500, 40, 1))
    try:
        await asyncio.sleep(2.0)
        for index, port in enumerate(ports):
            proc = cluster.procs[index]
            proc.terminate()
            for _ in range(200):  # bounded: a drained node exits within drain_timeout + 1 s
                if not proc.alive():
                    break
                await asyncio.sleep(0.05)
            assert not proc.alive(), proc.log_tail()
            cluster.procs[index] = start_node(
                cluster.tmp, f"node{index}-again", port, node_url=cluster.urls[index],
                peers=cluster.urls, env=ENV, uvicorn_args=(),
            )  # fmt: skip
            await asyncio.to_thread(wait_healthy, cluster.urls[index], cluster.procs[index])
            assert not clients.done()  # the stream outlasts the restarts
        result = await clients
    finally:
        if not clients.done():
            clients.cancel()
    _check_everyone(result)
    assert all(c["connects"] >= 2 for c in result["per"])  # everybody's node went at least once
    assert cluster.stats("recovery_misses") == 0
