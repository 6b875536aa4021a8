"""3 siomesh nodes behind real round-robin balancers (nginx, HAProxy, no stickiness): every
client does acked round trips with zero failures, over every transport, with text, binary and
near-limit payloads; forwarding demonstrably happened and clients landed on several nodes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import require_binary
from tests.harness.balancers import Balancer, start_balancer
from tests.harness.load import LoadResult, run_load, text_payload
from tests.harness.procs import MeshCluster, start_mesh

MAX_BUFFER = 200_000
NODE_ENV = {
    "ECHO_MAX_BUFFER": str(MAX_BUFFER),
    "ECHO_PING_INTERVAL": "5",
    "ECHO_PING_TIMEOUT": "5",
}
CLIENTS = 50
ROUND_TRIPS = 5
TRANSPORTS = {
    "polling": ("polling",),
    "upgrade": ("polling", "websocket"),
    "websocket": ("websocket",),
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshCluster]:
    cluster = start_mesh(3, tmp_path_factory.mktemp("mesh"), env=NODE_ENV)
    try:
        yield cluster
    finally:
        cluster.end()


@pytest.fixture(scope="module", params=["nginx", "haproxy"])
def balancer(
    request: pytest.FixtureRequest, mesh: MeshCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Balancer]:
    name: str = request.param
    require_binary(name)
    lb = start_balancer(name, mesh.addresses, tmp_path_factory.mktemp(name))
    try:
        yield lb
    finally:
        lb.stop()


def binary_payload(client: int, round_trip: int) -> Any:
    blob = bytes((client * 31 + round_trip * 7 + i) % 256 for i in range(2048))
    return {"client": client, "n": round_trip, "blob": blob, "tail": b"\x00\xff" * 3}


def big_payload(client: int, round_trip: int) -> Any:
    # JSON-encoded in an Engine.IO packet this stays just under max_http_buffer_size.
    head = f"{client}/{round_trip}:"
    return head + "x" * (190_000 - len(head))


async def _run(
    mesh: MeshCluster, lb: Balancer, transport: str, payload: Any, **kwargs: Any
) -> tuple[LoadResult, int]:
    before = mesh.total("forwarded")
    result = await run_load(lb.url, transports=TRANSPORTS[transport], payload=payload, **kwargs)
    forwarded = mesh.total("forwarded") - before
    assert result.ok, f"{lb.name} {transport}: {result.summary()}"
    return result, forwarded


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize("kind", ["text", "binary"])
async def test_round_trips_through_round_robin(
    mesh: MeshCluster, balancer: Balancer, transport: str, kind: str
) -> None:
    payload = text_payload if kind == "text" else binary_payload
    takeovers = mesh.total("takeovers")
    result, forwarded = await _run(
        mesh, balancer, transport, payload, clients=CLIENTS, round_trips=ROUND_TRIPS
    )
    takeovers = mesh.total("takeovers") - takeovers
    assert result.connected == CLIENTS
    assert len(result.latencies) == CLIENTS * ROUND_TRIPS
    # Round-robin spreads the handshakes, so sessions live on several nodes...
    assert len(result.nodes_seen) >= 2, result.summary()
    if transport == "polling":
        # ...and a polling session's later requests land on other nodes and are forwarded;
        assert forwarded > 0, f"no request was forwarded: {result.summary()}"
    elif transport == "upgrade":
        # an upgrade that lands on another node takes its session over: nothing is relayed
        assert takeovers > 0, f"no session was taken over: {result.summary()}"
        assert mesh.total("relayed_websockets") == 0
    errors = mesh.total("forward_errors")
    assert errors == 0, f"forward errors on the nodes: {mesh.stats('forward_errors')}"


@pytest.mark.parametrize("transport", ["polling", "websocket"])
async def test_payload_near_max_http_buffer_size(
    mesh: MeshCluster, balancer: Balancer, transport: str
) -> None:
    result, forwarded = await _run(
        mesh, balancer, transport, big_payload, clients=6, round_trips=2, call_timeout=20
    )
    assert result.completed_round_trips == 12
    if transport == "polling":
        assert forwarded > 0, result.summary()
