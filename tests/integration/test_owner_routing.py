"""Owner-aware balancer configs (``siomesh balancer``, :mod:`siomesh.owner_routing`) with real
nginx, HAProxy and Caddy in front of 3 real nodes: after the handshake every request goes
straight to its owner (the nodes count 0 forwards and 0 takeovers); a tag the config does not
know, and a node frozen for 15 s, cost nothing to the clients the config can route."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from siomesh.owner_routing import backends, render
from tests.conftest import require_binary
from tests.harness.balancers import Balancer, start_balancer
from tests.harness.callers import steady_caller
from tests.harness.load import run_load
from tests.harness.procs import TEST_SECRET, MeshCluster, start_mesh

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshCluster]:
    cluster = start_mesh(3, tmp_path_factory.mktemp("mesh"))
    try:
        yield cluster
    finally:
        cluster.end()


@pytest.fixture(scope="module", params=["nginx", "haproxy", "caddy"])
def owner_lb(
    request: pytest.FixtureRequest, mesh: MeshCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Balancer]:
    name: str = request.param
    require_binary(name)
    lb = start_balancer(
        name, mesh.addresses, tmp_path_factory.mktemp(name), owner_secret=TEST_SECRET
    )
    try:
        yield lb
    finally:
        lb.stop()


@pytest.mark.parametrize("transports", [("polling",), ("polling", "websocket")])
async def test_no_forward_after_the_handshake(
    mesh: MeshCluster, owner_lb: Balancer, transports: tuple[str, ...]
) -> None:
    forwarded, takeovers = mesh.total("forwarded"), mesh.total("takeovers")
    result = await run_load(owner_lb.url, clients=30, round_trips=5, transports=transports)
    assert result.ok, result.summary()
    assert len(result.nodes_seen) == 3, result.summary()  # round-robin handshakes
    assert mesh.total("forwarded") == forwarded, mesh.stats("forwarded")
    assert mesh.total("takeovers") == takeovers, mesh.stats("takeovers")
    assert mesh.total("relayed_websockets") == 0


async def test_a_tag_the_config_does_not_know_is_forwarded(
    mesh: MeshCluster, tmp_path: Path
) -> None:
    """A node added to the balancer by hand, its tag not in the map (the config was not
    regenerated): its sessions' requests go round-robin and the mesh forwards them."""
    require_binary("nginx")
    nodes = backends(TEST_SECRET, mesh.urls)
    text = render("nginx", nodes, listen="{{LISTEN}}", run_dir=str(tmp_path))
    unknown = f'        "~^{nodes[2].tag}" siomesh_owner3;\n'
    assert unknown in text
    forwarded = mesh.total("forwarded")
    lb = start_balancer("nginx", [], tmp_path, config_text=text.replace(unknown, ""))
    try:
        result = await run_load(lb.url, clients=30, round_trips=5)
    finally:
        lb.stop()
    assert result.ok, result.summary()
    assert mesh.total("forwarded") > forwarded  # node 3's sessions, through the mesh


@pytest.mark.parametrize("name", ["nginx", "haproxy", "caddy"])
async def test_a_frozen_node_costs_other_nodes_clients_nothing(tmp_path: Path, name: str) -> None:
    """One of 3 nodes frozen (SIGSTOP) for 15 s under 30 polling clients calling every
    0.2 s: behind round-robin a third of every client's polls would land on it; behind the
    owner-aware config only its own clients notice."""
    require_binary(name)
    cluster = start_mesh(3, tmp_path / "mesh")
    lb = start_balancer(name, cluster.addresses, tmp_path / name, owner_secret=TEST_SECRET)
    stop = asyncio.Event()
    count = 30
    logs: list[list[tuple[float, bool]]] = [[] for _ in range(count)]
    sids: list[list[str]] = [[] for _ in range(count)]
    tasks = [
        asyncio.ensure_future(steady_caller(lb.url, i, stop, logs[i], sids=sids[i]))
        for i in range(count)
    ]
    frozen = cluster.nodes[2]
    try:
        await asyncio.sleep(2)
        frozen_tag = backends(TEST_SECRET, [frozen.url])[0].tag
        frozen.proc.popen.send_signal(signal.SIGSTOP)
        began = time.monotonic()
        await asyncio.sleep(15)
        frozen.proc.popen.send_signal(signal.SIGCONT)
        ended = time.monotonic()
        await asyncio.sleep(1)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        others = [i for i in range(count) if sids[i] and not sids[i][0].startswith(frozen_tag)]
        lost = {i: sum(1 for t, ok in logs[i] if not ok and began <= t <= ended) for i in others}
        owned = count - len(others)
        print(f"{name}: {owned} clients owned by the frozen node; others lost {lost}")
        assert 10 <= len(others) < count
        assert not any(lost.values()), lost
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            frozen.proc.popen.send_signal(signal.SIGCONT)
        lb.stop()
        cluster.end()


def test_the_command_prints_what_the_harness_runs() -> None:
    urls = ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    out = subprocess.run(
        [sys.executable, "-m", "siomesh.cli", "balancer", "haproxy", *urls,
         "--secret", "s3cret", "--listen", "*:80"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert out == render("haproxy", backends("s3cret", urls), listen="*:80")
    for node in backends("s3cret", urls):
        assert f"urlp(sid) -m beg -- {node.tag}" in out


@pytest.mark.parametrize(("kind", "shipped"), [("nginx", "nginx-owner.conf"),
                                                ("haproxy", "haproxy-owner.cfg"),
                                                ("caddy", "Caddyfile-owner")])  # fmt: skip
def test_the_shipped_examples_are_what_the_command_prints(kind: str, shipped: str) -> None:
    urls = ["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"]
    expected = render(kind, backends("change-me", urls), listen="0.0.0.0:80")
    text = (REPO / "examples" / "balancers" / shipped).read_text()
    assert text == expected, f"regenerate: siomesh balancer {kind} --secret change-me {urls}"
