"""Every shipped balancer config in examples/balancers, started for real in front of 3 siomesh
nodes, passes a polling load with zero failures (Traefik is shipped but not packaged here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import require_binary
from tests.harness.balancers import BALANCERS, CONFIG_DIR, render, start_balancer
from tests.harness.load import run_load
from tests.harness.procs import MeshCluster, start_mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshCluster]:
    cluster = start_mesh(
        3,
        tmp_path_factory.mktemp("mesh"),
        env={"ECHO_PING_INTERVAL": "5", "ECHO_PING_TIMEOUT": "5"},
    )
    try:
        yield cluster
    finally:
        cluster.end()


@pytest.mark.parametrize(
    ("name", "template"),
    [
        ("nginx", None),
        ("haproxy", None),
        ("apache", None),
        ("caddy", None),
        # Sticky baselines for the benchmarks: they must at least run.
        ("nginx", "nginx-ip-hash.conf"),
        ("haproxy", "haproxy-sticky-cookie.cfg"),
    ],
)
async def test_shipped_config_serves_polling_load(
    mesh: MeshCluster,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    template: str | None,
) -> None:
    require_binary(name)
    lb = start_balancer(name, mesh.addresses, tmp_path_factory.mktemp(name), template=template)
    try:
        before = mesh.total("forwarded")
        result = await run_load(lb.url, clients=20, round_trips=3, transports=("polling",))
        forwarded = mesh.total("forwarded") - before
    finally:
        lb.stop()
    assert result.ok, f"{name} {template or BALANCERS[name].template}: {result.summary()}"
    if template is None:
        # Round-robin, not sticky: sessions spread and requests get forwarded.
        assert len(result.nodes_seen) >= 2, result.summary()
        assert forwarded > 0, result.summary()


def test_every_template_renders(tmp_path_factory: pytest.TempPathFactory) -> None:
    run_dir = tmp_path_factory.mktemp("render")
    names = sorted(p.name for p in CONFIG_DIR.iterdir() if p.suffix != ".md")
    assert {"nginx.conf", "haproxy.cfg", "apache.conf", "Caddyfile", "traefik.yml"} <= set(names)
    for template in names:
        text = render(
            template,
            listen_port=8000,
            backends=["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
            run_dir=run_dir,
        )
        assert "{{" not in text
        if template in ("nginx.conf", "haproxy.cfg", "apache.conf", "Caddyfile"):
            assert all(f"127.0.0.1:{i}" in text for i in (1, 2, 3)), template
            lowered = "\n".join(
                line for line in text.lower().splitlines() if not line.strip().startswith("#")
            )
            for sticky in ("ip_hash", "cookie serverid", "stickysession", "lb_policy cookie"):
                assert sticky not in lowered, f"{template} must be round-robin, found {sticky}"
