"""The owner-aware balancer configs (``siomesh balancer``) parse in the real balancers whatever
characters the node tags hold: a tag is 4 base64url characters and may start with ``-``, which
HAProxy reads as an ACL option unless ``--`` comes first (it refused the whole config, about
once in 20 three-node clusters, before)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from siomesh.owner_routing import backends, haproxy_config, nginx_config
from tests.conftest import require_binary

SECRET = "owner-routing-configs-test-secret-0123456789"


def _urls_with_a_dash_first_tag() -> list[str]:
    """Three node URLs, the first one's tag starting with ``-`` (and one with ``_``)."""
    picked: dict[str, str] = {}
    for port in range(20000, 40000):  # bounded: each first character comes up 1 in 64
        url = f"http://127.0.0.1:{port}"
        tag = backends(SECRET, [url])[0].tag
        if tag[0] in "-_" and tag[0] not in picked:
            picked[tag[0]] = url
        if len(picked) == 2:
            break
    assert len(picked) == 2, picked
    return [picked["-"], picked["_"], "http://127.0.0.1:19999"]


def test_haproxy_accepts_a_tag_that_starts_with_a_dash(tmp_path: Path) -> None:
    haproxy = require_binary("haproxy")
    nodes = backends(SECRET, _urls_with_a_dash_first_tag())
    assert nodes[0].tag.startswith("-")
    config = tmp_path / "owner-haproxy.cfg"
    config.write_text(haproxy_config(nodes, listen="127.0.0.1:18080"))
    check = subprocess.run(
        [haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"-m beg -- {nodes[0].tag}" in config.read_text()


def test_nginx_accepts_a_tag_that_starts_with_a_dash(tmp_path: Path) -> None:
    nginx = require_binary("nginx")
    nodes = backends(SECRET, _urls_with_a_dash_first_tag())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = tmp_path / "owner-nginx.conf"
    config.write_text(nginx_config(nodes, listen="127.0.0.1:18081", run_dir=str(run_dir)))
    check = subprocess.run(
        [nginx, "-t", "-p", str(run_dir), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stdout + check.stderr
