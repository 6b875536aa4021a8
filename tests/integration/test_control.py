"""Control: the same load against 3 plain python-socketio nodes (no SioMesh) behind the same
round-robin nginx fails for polling clients. Without this failure the forwarding tests would
prove nothing."""

from __future__ import annotations

import pytest

from tests.conftest import require_binary
from tests.harness.balancers import start_balancer
from tests.harness.load import run_load
from tests.harness.procs import start_mesh


async def test_plain_nodes_fail_behind_round_robin(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    require_binary("nginx")
    cluster = start_mesh(
        3,
        tmp_path_factory.mktemp("plain"),
        app="tests.apps.plain:app",
        env={"ECHO_PING_INTERVAL": "5", "ECHO_PING_TIMEOUT": "5"},
    )
    try:
        lb = start_balancer("nginx", cluster.addresses, tmp_path_factory.mktemp("nginx"))
        try:
            clients = 50
            result = await run_load(
                lb.url,
                clients=clients,
                round_trips=3,
                transports=("polling",),
                connect_timeout=3,
                call_timeout=3,
            )
        finally:
            lb.stop()
    finally:
        cluster.end()
    # Each polling request after the handshake goes to the next node, which answers 400.
    assert result.failed >= clients * 0.8, result.summary()
