"""Every shipped round-robin balancer config, started for real, refuses the mesh's own
endpoints (``/_siomesh/...``) from outside, in plain and percent-encoded spellings, while the
health endpoint and a normal Engine.IO handshake still go through."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import require_binary
from tests.harness.balancers import start_balancer
from tests.harness.procs import MeshCluster, http_get, start_mesh

#: Endpoints a node serves to anybody who reaches it directly; a balancer must refuse them.
INTERNAL = ("/_siomesh/status", "/_siomesh/metrics")
#: The same endpoints spelled so that a balancer matching the raw path would let them through
#: (the nodes decode the path: ``%5F`` is ``_``, ``%2F`` is ``/``).
ENCODED = ("/%5Fsiomesh/status", "/_siomesh%2Fmetrics", "/%5fsiomesh%2fstatus")
HANDSHAKE = "/socket.io/?EIO=4&transport=polling"
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshCluster]:
    cluster = start_mesh(3, tmp_path_factory.mktemp("mesh"))
    try:
        yield cluster
    finally:
        cluster.stop()


def test_nodes_serve_the_internal_endpoints_directly(mesh: MeshCluster) -> None:
    """Control: the refusals below are the balancers' doing, not the nodes'."""
    node = mesh.nodes[0].url
    for path in INTERNAL + ENCODED:
        status, _ = http_get(node + path, timeout=TIMEOUT)
        assert status == 200, f"{node}{path} answered {status}"


@pytest.mark.parametrize("name", ["nginx", "haproxy", "apache", "caddy"])
def test_balancer_refuses_mesh_endpoints_but_serves_engineio(
    mesh: MeshCluster, tmp_path_factory: pytest.TempPathFactory, name: str
) -> None:
    require_binary(name)
    lb = start_balancer(name, mesh.addresses, tmp_path_factory.mktemp(name))
    try:
        refused = {path: http_get(lb.url + path, timeout=TIMEOUT) for path in INTERNAL}
        encoded = {path: http_get(lb.url + path, timeout=TIMEOUT) for path in ENCODED}
        health = http_get(lb.url + "/_siomesh/health", timeout=TIMEOUT)
        handshake = http_get(lb.url + HANDSHAKE, timeout=TIMEOUT)
    finally:
        lb.stop()
    for path, (status, body) in refused.items():
        assert status in (403, 404), f"{name} {path}: {status} {body[:200]!r}"
    for path, (status, body) in encoded.items():
        assert 400 <= status < 500, f"{name} {path}: {status} {body[:200]!r}"
    status, body = health
    assert status == 200, f"{name} health: {status} {body[:200]!r}"
    assert json.loads(body)["status"] == "serving"
    status, body = handshake
    assert status == 200, f"{name} handshake: {status} {body[:200]!r}"
    # An Engine.IO v4 open packet: "0" then the JSON handshake with the new session's sid.
    assert body.startswith(b"0{"), body[:200]
    assert json.loads(body[1:])["sid"]
