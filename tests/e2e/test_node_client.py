"""The npm ``socket.io-client`` 4.8.4 under Node.js, through a non-sticky balancer: ``siomesh
run`` with 3 workers sharing one SO_REUSEPORT port, so every new TCP connection lands on a
worker picked by the kernel.

The client script (``node/client.js``) connects several sockets (more, up to 24, until their
sessions are on at least two workers: the kernel's pick is random), does acked ``echo`` round
trips (text and binary), then a room broadcast.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import (
    HAS_ADAPTER,
    NEEDS_ADAPTER,
    Cluster,
    node_client,
    run_cluster,
)

NODE_DIR = Path(__file__).parent / "node"
CLIENTS = 6
ROUNDS = 5
MODES = ["polling", "upgrade"]


@pytest.fixture(scope="module")
def node_bin() -> str:
    return node_client()


@pytest.fixture(scope="module")
def echo_cluster(tmp_path_factory: pytest.TempPathFactory, node_bin: str) -> Iterator[Cluster]:
    with run_cluster(
        ["run", "tests.apps.echo:app", "--workers", "3"], tmp_path_factory.mktemp("node")
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def runs(node_bin: str, echo_cluster: Cluster) -> dict[str, dict[str, Any]]:
    """One client.js run per mode, shared by the tests that read its result."""
    results: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        done = subprocess.run(
            [node_bin, "client.js", echo_cluster.url, mode, str(CLIENTS), str(ROUNDS)],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=90,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"client.js {mode} exited {done.returncode}:\n{done.stderr}"
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize("mode", MODES)
def test_connects_and_echoes(
    runs: dict[str, dict[str, Any]], echo_cluster: Cluster, mode: str
) -> None:
    result = runs[mode]
    assert result["error"] is None, result
    assert result["echoErrors"] == [], result["echoErrors"]
    clients = result["clients"]
    assert CLIENTS <= clients <= 24, clients
    expected = "polling" if mode == "polling" else "websocket"
    assert result["transports"] == [expected] * clients
    assert result["ownerChanged"] == 0, result
    owners = set(result["owners"])
    assert owners <= set(echo_cluster.workers)
    # Sessions made on fresh connections spread over workers; client.js adds clients (up to 24)
    # until two workers own one: all of them on one worker would be a fluke (p = 3^-23).
    assert len(owners) >= 2, owners


@pytest.mark.xfail(not HAS_ADAPTER, reason=NEEDS_ADAPTER, strict=False)
@pytest.mark.parametrize("mode", MODES)
def test_receives_room_broadcast_from_another_worker(
    runs: dict[str, dict[str, Any]], mode: str
) -> None:
    result = runs[mode]
    assert result["error"] is None, result
    broadcast = result["broadcast"]
    assert broadcast["crossWorkerExpected"] >= 1, result["owners"]
    assert broadcast["received"] == broadcast["expected"], broadcast
    assert broadcast["crossWorkerReceived"] == broadcast["crossWorkerExpected"], broadcast
