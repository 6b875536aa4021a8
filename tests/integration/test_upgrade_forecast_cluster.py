"""Polling-only clients stop waiting the takeover window once the nodes have seen that their
kind never upgrades (``takeover.learn``), while upgrading clients are still taken over, never
relayed: 3 real nodes behind real nginx round-robin."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
import socketio

from tests.conftest import require_binary
from tests.harness.balancers import Balancer, start_balancer
from tests.harness.load import run_load
from tests.harness.procs import MeshCluster, start_mesh


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshCluster, Balancer]]:
    require_binary("nginx")
    # a session counts as "did not upgrade" once max_window passed since its handshake
    mesh = start_mesh(
        3, tmp_path_factory.mktemp("mesh"), env={"SIOMESH_TAKEOVER_MAX_WINDOW": "0.5"}
    )
    lb = start_balancer("nginx", mesh.addresses, tmp_path_factory.mktemp("nginx"))
    try:
        yield mesh, lb
    finally:
        lb.stop()
        mesh.end()


async def _polling_connect(
    url: str, clients: list[socketio.AsyncClient], agent: str | None = None
) -> None:
    client = socketio.AsyncClient(reconnection=False)
    clients.append(client)
    headers = {"User-Agent": agent} if agent else {}
    await asyncio.wait_for(client.connect(url, transports=["polling"], headers=headers), 15)
    assert await client.call("echo", {"x": 1}, timeout=10) == {"x": 1}


async def _close(client: socketio.AsyncClient) -> None:
    # python-engineio's polling client waits for its pending long-poll when it disconnects
    # (up to 30 s, whatever the server): close them all at once, bounded
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), 3)


async def test_polling_only_clients_are_no_longer_held(
    cluster: tuple[MeshCluster, Balancer],
) -> None:
    mesh, lb = cluster
    clients: list[socketio.AsyncClient] = []
    try:
        # python-socketio's own client (aiohttp's User-Agent) polls only when it never
        # upgrades: not held from the first connect, on fresh nodes
        for _ in range(6):
            await _polling_connect(lb.url, clients)
        assert sum(mesh.stats("takeover_holds_skipped").values()) == 6
        # a kind the nodes do not know: one at a time, 8 outcomes per node teach it
        for _ in range(45):
            await _polling_connect(lb.url, clients, agent="some-polling-client/1.0")
    finally:
        await asyncio.gather(*(_close(c) for c in clients))
    skipped = mesh.stats("takeover_holds_skipped")
    assert 6 + 10 <= sum(skipped.values()) < 6 + 45, skipped
    # python-socketio's upgrading client is unaffected: taken over where its WebSocket
    # lands, never relayed
    takeovers = mesh.total("takeovers")
    result = await run_load(lb.url, clients=20, round_trips=3, transports=("polling", "websocket"))
    assert result.ok, result.summary()
    assert mesh.total("takeovers") > takeovers
    assert mesh.total("relayed_websockets") == 0
    assert mesh.total("takeover_mispredicted") == 0
