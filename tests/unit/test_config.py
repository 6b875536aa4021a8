from __future__ import annotations

import pytest

from siomesh.config import ConfigError, MeshConfig, normalize_url

SECRET = "config-secret-0123456789"


def test_env_is_read() -> None:
    cfg = MeshConfig.build(
        {
            "SIOMESH_NODE_URL": "127.0.0.1:8001",
            "SIOMESH_PEERS": "http://127.0.0.1:8001, http://127.0.0.1:8002/",
            "SIOMESH_SECRET": SECRET,
            "SIOMESH_CONNECT_TIMEOUT": "0.5",
            "SIOMESH_POOL_SIZE": "7",
        }
    )
    assert cfg.node_url == "http://127.0.0.1:8001"
    assert cfg.peers == ("http://127.0.0.1:8001", "http://127.0.0.1:8002")
    assert cfg.connect_timeout == 0.5
    assert cfg.pool_size == 7


def test_arguments_beat_env() -> None:
    cfg = MeshConfig.build(
        {"SIOMESH_NODE_URL": "http://a:1", "SIOMESH_SECRET": SECRET},
        node_url="http://b:2",
    )
    assert cfg.node_url == "http://b:2"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"secret": SECRET}, "SIOMESH_NODE_URL"),
        ({"node_url": "http://a:1"}, "SIOMESH_SECRET"),
        ({"node_url": "http://a:1", "secret": "short"}, "at least 16"),
        ({"node_url": "ftp://a:1", "secret": SECRET}, "http"),
        ({"node_url": "http://a:1/path", "secret": SECRET}, "no path"),
        ({"node_url": "http://a:1", "secret": SECRET, "connect_timeout": -1}, "connect_timeout"),
        ({"node_url": "http://a:1", "secret": SECRET, "health_path": "health"}, "health_path"),
        ({"node_url": "http://a:1", "secret": SECRET, "bogus": 1}, "unknown option"),
    ],
)
def test_errors_name_the_fix(overrides: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        MeshConfig.build({}, **overrides)


def test_bad_number_in_env() -> None:
    with pytest.raises(ConfigError, match="SIOMESH_CONNECT_TIMEOUT"):
        MeshConfig.build(
            {
                "SIOMESH_NODE_URL": "http://a:1",
                "SIOMESH_SECRET": SECRET,
                "SIOMESH_CONNECT_TIMEOUT": "soon",
            }
        )


def test_normalize_url() -> None:
    assert normalize_url("http://h") == "http://h:80"
    assert normalize_url("https://h/") == "https://h:443"
    assert normalize_url("http://[::1]:9000") == "http://[::1]:9000"


def test_dns_peers_only_for_peers() -> None:
    cfg = MeshConfig.build({}, node_url="http://a:1", secret=SECRET, peers="dns+http://svc:8000")
    assert cfg.peers == ("dns+http://svc:8000",)
    with pytest.raises(ConfigError, match="only for peers"):
        MeshConfig.build({}, node_url="dns+http://a:1", secret=SECRET)
