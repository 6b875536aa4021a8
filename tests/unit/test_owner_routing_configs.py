"""The owner-aware balancer configs (``siomesh balancer``) parse in the real balancers whatever
characters the node tags hold: a tag is 4 base64url characters and may start with ``-``, which
HAProxy reads as an ACL option unless ``--`` comes first (it refused the whole config, about
once in 20 three-node clusters, before)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from siomesh.owner_routing import backends, caddy_config, haproxy_config, nginx_config
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


def test_caddy_accepts_tags_that_start_with_a_dash_or_an_underscore(tmp_path: Path) -> None:
    caddy = require_binary("caddy")
    nodes = backends(SECRET, _urls_with_a_dash_first_tag())
    config = tmp_path / "Caddyfile"
    config.write_text(caddy_config(nodes, listen="127.0.0.1:18082"))
    check = subprocess.run(
        [caddy, "validate", "--config", str(config), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert check.returncode == 0, check.stdout + check.stderr
    text = config.read_text()
    for node in nodes:
        assert f"vars_regexp {{http.request.uri.query.sid}} ^{node.tag}\n" in text


@pytest.mark.parametrize(
    ("listen", "site", "bind"),
    [
        ("0.0.0.0:80", "http://:80 {", None),
        ("*:8080", "http://:8080 {", None),
        ("127.0.0.1:18083", "http://:18083 {", "\tbind 127.0.0.1\n"),
        ("[::1]:18084", "http://:18084 {", "\tbind ::1\n"),
    ],
)
def test_caddy_site_has_no_host_matcher(listen: str, site: str, bind: str | None) -> None:
    """A site address with a host would make Caddy match requests by their Host header (a
    client asking for example.com through 0.0.0.0:80 would get an empty answer): the address
    is only the port, and a specific address becomes ``bind``."""
    text = caddy_config(backends(SECRET, ["http://127.0.0.1:19999"]), listen=listen)
    assert site in text
    if bind is None:
        assert "\tbind " not in text
    else:
        assert bind in text


def test_caddy_listen_must_have_a_port() -> None:
    with pytest.raises(ValueError, match="host:port"):
        caddy_config(backends(SECRET, ["http://127.0.0.1:19999"]), listen="0.0.0.0")
