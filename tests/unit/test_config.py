from __future__ import annotations

import pytest

from siomesh.config import ConfigError, MeshConfig, normalize_url
from siomesh.protocol.membership import GossipConfig

SECRET = "config-secret-0123456789"


def test_env_is_read() -> None:
    cfg = MeshConfig.build(
        {
            "SIOMESH_NODE_URL": "127.0.0.1:8001",
            "SIOMESH_PEERS": "http://127.0.0.1:8001, http://127.0.0.1:8002/",
            "SIOMESH_SECRET": SECRET,
            "SIOMESH_CONNECT_TIMEOUT": "0.5",
            "SIOMESH_MAX_BODY_BYTES": "7",
        }
    )
    assert cfg.node_url == "http://127.0.0.1:8001"
    assert cfg.peers == ("http://127.0.0.1:8001", "http://127.0.0.1:8002")
    assert cfg.links.connect_timeout == 0.5  # the 0.1 name, read into links
    assert cfg.max_body_bytes == 7


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


def test_secret_as_bytes_is_accepted() -> None:
    cfg = MeshConfig.build({}, node_url="http://a:1", secret=SECRET.encode())
    assert cfg.secret == SECRET
    assert isinstance(cfg.secret, str)


def test_secret_bytes_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"not UTF-8.*urlsafe_b64encode"):
        MeshConfig.build({}, node_url="http://a:1", secret=b"\xff\xfe" + bytes(range(20)))


def test_secret_of_another_type_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be a str"):
        MeshConfig.build({}, node_url="http://a:1", secret=12345678901234567890)


@pytest.mark.parametrize(
    "secret",
    [
        "change-me-to-32-random-bytes-base64url",  # examples/kubernetes/siomesh.yaml
        "CHANGEME-CHANGEME-CHANGEME",
        "please-change-it-now-0123456789",
        "replace-me-with-a-random-value",
        "<placeholder-for-the-cluster-secret>",
        "your-secret-here-0123456789",
        "xxxxxxxxxxxxxxxxxxxxxxxx",
        "XXXX-XXXX-XXXX-XXXX",
        "secretsecretsecret",
        "my-super-secret-key",
        "siomesh-cluster-secret",
        "0000000000000000",
        "abababababababababab",
    ],
)
def test_placeholder_secrets_are_refused_naming_the_fix(secret: str) -> None:
    with pytest.raises(ConfigError, match=r"placeholder.*SIOMESH_SECRET.*token_urlsafe"):
        MeshConfig.build({}, node_url="http://a:1", secret=secret)
    with pytest.raises(ConfigError, match="placeholder"):
        MeshConfig.build({"SIOMESH_NODE_URL": "http://a:1", "SIOMESH_SECRET": secret})


@pytest.mark.parametrize(
    "secret",
    [
        SECRET,
        # The secrets of the test suite and of `siomesh run`'s import check stay accepted.
        "integration-test-secret-0123456789",
        "adapter-test-secret-0123456789",
        "siomesh-supervisor-import-check",
        "Tr0ub4dor&3-correct-horse-battery",
    ],
)
def test_real_secrets_are_accepted(secret: str) -> None:
    assert MeshConfig.build({}, node_url="http://a:1", secret=secret).secret == secret


def test_random_secrets_are_never_placeholders() -> None:
    import secrets

    for _ in range(500):
        for value in (secrets.token_urlsafe(32), secrets.token_hex(16)):
            MeshConfig.build({}, node_url="http://a:1", secret=value)


@pytest.mark.parametrize(
    "node_url",
    [
        "http://0.0.0.0:8000",
        "0.0.0.0:8000",
        "https://0.0.0.0",
        "http://[::]:8000",
        "http://[0:0:0:0:0:0:0:0]:8000",
    ],
)
def test_wildcard_node_url_is_refused(node_url: str) -> None:
    with pytest.raises(ConfigError, match=r"wildcard address.*address peers reach this node at"):
        MeshConfig.build({}, node_url=node_url, secret=SECRET)
    with pytest.raises(ConfigError, match="wildcard"):
        MeshConfig.build({"SIOMESH_NODE_URL": node_url, "SIOMESH_SECRET": SECRET})


def test_specific_addresses_are_fine_for_node_url() -> None:
    for url in ("http://127.0.0.1:8000", "http://[::1]:8000", "http://10.0.0.1:8000", "http://a:1"):
        MeshConfig.build({}, node_url=url, secret=SECRET)


def test_sections_come_from_their_variables_and_from_keywords() -> None:
    cfg = MeshConfig.build(
        {
            "SIOMESH_NODE_URL": "http://10.0.0.1:8000",
            "SIOMESH_SECRET": SECRET,
            "SIOMESH_LINKS_HEARTBEAT": "7",
            "SIOMESH_ADAPTER_MAX_QUEUE": "50",
            "SIOMESH_ADAPTER_ROOM_ROUTING": "directory",
            "SIOMESH_GOSSIP_PRESET": "local",
            "SIOMESH_GOSSIP_PROBE_INTERVAL": "0.3",
        },
        links={"buffer_bytes": 2 << 20},
    )
    assert cfg.links.heartbeat == 7.0
    assert cfg.links.buffer_bytes == 2 << 20
    assert cfg.adapter.max_queue == 50
    assert cfg.adapter.room_routing == "directory"
    assert cfg.gossip.probe_interval == 0.3
    assert cfg.gossip.gossip_interval == GossipConfig.local().gossip_interval


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"SIOMESH_LINKS_HEARTBEAT": "0"}, "links.heartbeat"),
        ({"SIOMESH_LINKS_BUFFER_BYTES": "10"}, "links.buffer_bytes"),
        ({"SIOMESH_LINKS_PEER_CA_FILE": "/nonexistent/ca.pem"}, "peer_ca_file"),
        ({"SIOMESH_ADAPTER_ROOM_ROUTING": "some"}, "room_routing"),
        ({"SIOMESH_GOSSIP_PRESET": "mars"}, "preset"),
        ({"SIOMESH_GOSSIP_PROBE_TIMEOUT": "5"}, "probe_timeout"),
        ({"SIOMESH_LINKS_HEARTBEAT": "soon"}, "SIOMESH_LINKS_HEARTBEAT"),
    ],
)
def test_bad_section_values_are_refused_by_name(env: dict[str, str], words: str) -> None:
    base = {"SIOMESH_NODE_URL": "http://10.0.0.1:8000", "SIOMESH_SECRET": SECRET}
    with pytest.raises(ConfigError, match=words):
        MeshConfig.build({**base, **env})


def test_unknown_section_option_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown links option"):
        MeshConfig.build({}, node_url="http://a:1", secret=SECRET, links={"bogus": 1})


def test_single_options_are_read_here_too() -> None:
    from siomesh.config import env_list, env_option

    env = {"SIOMESH_SECRET": " s3cr3t ", "SIOMESH_PEERS": "http://a:1, http://b:2;http://c:3"}
    assert env_option("secret", env) == "s3cr3t"
    assert env_option("node_url", env) is None
    assert env_option("secret", {"SIOMESH_SECRET": "  "}) is None
    assert env_list("peers", env) == ("http://a:1", "http://b:2", "http://c:3")
    assert env_list("peers", {}) == ()
