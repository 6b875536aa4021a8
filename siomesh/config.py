"""MeshConfig: every option of a siomesh node, validated once, readable from the environment.

One tree: :class:`MeshConfig` holds the node's own options and five sections, ``links``
(:class:`LinksConfig`), ``adapter`` (:class:`AdapterConfig`), ``takeover``
(:class:`TakeoverConfig`), ``recovery`` (:class:`RecoveryConfig`) and ``gossip``
(:class:`~siomesh.protocol.membership.GossipConfig`, from a named preset). Every field has an
environment variable: ``SIOMESH_<FIELD>`` for the node's own, ``SIOMESH_<SECTION>_<FIELD>`` for a
section's (``SIOMESH_LINKS_HEARTBEAT``, ``SIOMESH_ADAPTER_MAX_QUEUE``,
``SIOMESH_GOSSIP_PRESET``, ``SIOMESH_GOSSIP_PROBE_INTERVAL``). Explicit keyword arguments (a
section may be given as an instance or a dict of its fields) win over the environment, the
environment wins over the defaults. Everything is frozen: a running node never changes its
configuration. The 0.1 names ``connect_timeout``, ``signature_window`` and ``room_routing`` (and
their variables) are still read, into ``links`` and ``adapter``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from .protocol.membership import GossipConfig

__all__ = [
    "ENV_PREFIX",
    "AdapterConfig",
    "ConfigError",
    "LinksConfig",
    "MeshConfig",
    "RecoveryConfig",
    "TakeoverConfig",
    "env_list",
    "env_option",
    "local_options",
    "normalize_url",
    "parse_port_range",
]

ENV_PREFIX = "SIOMESH_"
_MIN_SECRET_BYTES = 16
_SECRET_FIX = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
# Placeholders seen in templates and docs, matched in the secret lowercased with everything but
# letters and digits dropped. Long enough that a random secret never contains one by chance
# (six x's in a row: under 1 in 10^7 for a 43-character token).
_PLACEHOLDERS = ("changeme", "changeit", "replaceme", "placeholder", "yoursecret", "xxxxxx")
# A secret made only of these words is a name for a secret, not a secret ("secret-secret",
# "my-cluster-secret", "siomesh-shared-secret").
_SECRET_WORDS = re.compile(
    r"(?:secret|my|your|our|the|cluster|siomesh|mesh|shared|super|key|password|default|test)+"
)
_MIN_DISTINCT_CHARS = 4


class ConfigError(ValueError):
    """A siomesh option is missing or invalid; the message names the option and the fix."""


def normalize_url(url: str, *, option: str = "url") -> str:
    """Return ``scheme://host:port`` for a peer URL, or raise :class:`ConfigError`.

    The normal form is what peers compare, so ``http://a:80/`` and ``http://a`` are one member.
    A peer may be ``dns+http://name:port``: a DNS name that resolves to many members (a
    Kubernetes headless service); it is kept as given and resolved by the runtime.
    """
    raw = url.strip()
    if "://" not in raw:
        raw = "http://" + raw
    dns = raw.startswith("dns+")
    if dns:
        if option != "peers":
            raise ConfigError(f"{option}: {url!r}: dns+ URLs are only for peers")
        raw = raw[4:]
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{option}: {url!r} must be an http:// or https:// URL")
    if not parts.hostname:
        raise ConfigError(f"{option}: {url!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{option}: {url!r} must be scheme://host:port with no path")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ConfigError(f"{option}: {url!r} has an invalid port") from exc
    host = parts.hostname
    if option == "node_url" and _is_wildcard(host):
        raise ConfigError(
            f"node_url: {url!r} is a wildcard address (what a server binds to, which nobody can "
            "connect to): set node_url to the address peers reach this node at, e.g. "
            "http://10.0.0.1:8000"
        )
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{'dns+' if dns else ''}{parts.scheme}://{host}:{port}"


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _secret_text(value: Any) -> str:
    """The secret as text: ``bytes`` are accepted when they are UTF-8."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(
                "secret: bytes that are not UTF-8 text cannot be shared through SIOMESH_SECRET; "
                "pass text, e.g. base64.urlsafe_b64encode(key).decode(), or a new secret from "
                f"{_SECRET_FIX}"
            ) from None
    raise ConfigError(f"secret must be a str (or UTF-8 bytes), not {type(value).__name__}")


def _placeholder(secret: str) -> str | None:
    """Why ``secret`` is a placeholder rather than a secret, or None."""
    core = re.sub(r"[^a-z0-9]", "", secret.lower())
    for word in _PLACEHOLDERS:
        if word in core:
            return f"it contains {word!r}"
    if _SECRET_WORDS.fullmatch(core):
        return "it is only words such as 'secret'"
    if len(set(secret)) < _MIN_DISTINCT_CHARS:
        return f"it has fewer than {_MIN_DISTINCT_CHARS} distinct characters"
    return None


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(p for p in (x.strip() for x in value.replace(";", ",").split(",")) if p)


def env_option(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The raw value of ``SIOMESH_<NAME>`` (None when unset or blank), for the commands and
    helpers that need one option before (or without) building a :class:`MeshConfig`: every
    ``SIOMESH_*`` variable is read in this module."""
    source = os.environ if env is None else env
    raw = source.get(ENV_PREFIX + name.upper(), "").strip()
    return raw or None


def env_list(name: str, env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """``SIOMESH_<NAME>`` as a comma (or semicolon) separated list, e.g. ``PEERS``."""
    raw = env_option(name, env)
    return _split_list(raw) if raw else ()


@dataclasses.dataclass(frozen=True, slots=True)
class LinksConfig:
    """Peer links (:mod:`siomesh.links`). Environment: ``SIOMESH_LINKS_<FIELD>``."""

    #: Time allowed to open a TCP connection to a peer. Short: an unreachable owner must turn
    #: into the client's 400 quickly, and a LAN connect takes well under a millisecond.
    connect_timeout: float = 1.0
    #: Bound on a link's handshake after the TCP connect.
    handshake_timeout: float = 5.0
    #: WebSocket ping interval on the links this node dials; a peer that does not answer
    #: within half of it (a frozen or cut-off node) has its link closed, which fails only the
    #: exchanges in flight with that peer. Long enough that a busy event loop is not mistaken
    #: for a dead peer.
    heartbeat: float = 10.0
    #: Bound on the bytes queued for sending on one link; beyond it a forward is refused
    #: (answered as an unreachable owner) and adapter messages wait in their own bounded queue.
    buffer_bytes: int = 64 << 20
    #: Accepted clock skew for a link offer: a replayed offer is refused by its nonce within
    #: this window and by its timestamp after it.
    offer_window: float = 30.0
    #: PEM file of the certificate authority that signed the peers' certificates, for
    #: ``https://`` node URLs under a private CA (without it, the system's trust store is
    #: used). Peers are always verified: there is no option to turn verification off.
    peer_ca_file: str | None = None

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "handshake_timeout", "heartbeat", "offer_window"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"links.{name} must be > 0")
        if self.buffer_bytes < 1 << 20:
            raise ConfigError("links.buffer_bytes must be at least 1 MiB (1048576)")
        if self.peer_ca_file is not None and not os.path.isfile(self.peer_ca_file):
            raise ConfigError(f"links.peer_ca_file: {self.peer_ca_file!r} is not a readable file")


@dataclasses.dataclass(frozen=True, slots=True)
class AdapterConfig:
    """The adapter (:mod:`siomesh.adapter`). Environment: ``SIOMESH_ADAPTER_<FIELD>``."""

    #: Messages kept per peer until it acknowledges them; beyond it they are dropped and the
    #: peer's clients they were for are disconnected to resync (never a silent gap).
    max_queue: int = 10_000
    #: On shutdown, how long to wait for peers to acknowledge what is queued.
    flush_timeout: float = 1.0
    #: Where a room emit goes: ``"all"`` live members (never misses a member that joined the
    #: room a moment ago), or ``"directory"``: only members the gossiped directory lists for
    #: the room (fewer peer messages; a join is seen by other nodes ~50-150 ms later, and an
    #: emit inside that window misses the new member).
    room_routing: str = "all"
    #: The most an emit waits for its live peers to have applied it (emit-completion and
    #: causal order, docs/adapter.md): past it the emit returns, the peer is reported lagging
    #: and not waited for until it catches up. 0: emits never wait (no cross-node order).
    order_timeout: float = 0.25

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise ConfigError("adapter.max_queue must be >= 1")
        if not 0 <= self.order_timeout <= 10:
            raise ConfigError("adapter.order_timeout must be between 0 and 10 seconds")
        if self.flush_timeout < 0:
            raise ConfigError("adapter.flush_timeout must be >= 0")
        if self.room_routing not in ("all", "directory"):
            raise ConfigError("adapter.room_routing must be 'all' or 'directory'")


@dataclasses.dataclass(frozen=True, slots=True)
class TakeoverConfig:
    """Upgrade takeover (:mod:`siomesh.takeover`). Environment: ``SIOMESH_TAKEOVER_<FIELD>``."""

    #: When a session's WebSocket upgrade lands on another node, that node takes the session
    #: over and serves the WebSocket itself; False keeps relaying it to the owner for life.
    enabled: bool = True
    #: Longest time a new session's Socket.IO packets are held, counted from its handshake,
    #: while its transport may still move: a client that sends its CONNECT by polling before
    #: its WebSocket probe (the JS client does) is held until the probe reaches a node or this
    #: passes. Polling-only clients pay it once, on connect; python-socketio's client never
    #: (it upgrades before it sends anything).
    window: float = 0.25
    #: When recent claims came later than ``window`` after their handshake (probes queue
    #: behind handshakes in a connect storm), new sessions are held up to 1.5 times the latest
    #: of the last 64 claims, at most this long (seconds), so that they are still taken over.
    max_window: float = 2.0
    #: Bound on one takeover exchange with the owner; past it the WebSocket is relayed.
    timeout: float = 2.0
    #: Learn, per client kind (User-Agent), whether sessions that send their first packet by
    #: polling ever upgrade, and do not hold those of kinds that never do (8 sessions of
    #: evidence, the last 16 remembered; siomesh.upgrade_forecast): polling-only clients then
    #: connect without waiting ``window``. False: hold every session.
    learn: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.window <= 10:
            raise ConfigError("takeover.window must be between 0 and 10 seconds")
        if not 0 <= self.max_window <= 10:
            raise ConfigError("takeover.max_window must be between 0 and 10 seconds")
        if self.timeout <= 0:
            raise ConfigError("takeover.timeout must be > 0")


@dataclasses.dataclass(frozen=True, slots=True)
class RecoveryConfig:
    """Connection state recovery (:mod:`siomesh.recovery`). Environment:
    ``SIOMESH_RECOVERY_<FIELD>``. Off by default, as in Node: it appends an offset to every
    event a client receives, and keeps state for clients that went away."""

    #: Serve Socket.IO 4.6's connection state recovery (``socket.recovered`` in the JS client).
    enabled: bool = False
    #: How long a session that lost its transport is kept, with the events sent to it since.
    max_disconnection: float = 120.0
    #: Most sessions kept at once per node (the oldest is dropped first).
    max_sessions: int = 10_000
    #: Most events logged per node (the oldest is dropped first; a client whose offset is no
    #: longer logged connects as a new session).
    max_log: int = 10_000

    def __post_init__(self) -> None:
        if not 0 < self.max_disconnection <= 24 * 3600:
            raise ConfigError("recovery.max_disconnection must be between 0 and 86400 seconds")
        if self.max_sessions < 1 or self.max_log < 1:
            raise ConfigError("recovery.max_sessions and recovery.max_log must be >= 1")


_SECTIONS: dict[str, type[Any]] = {
    "links": LinksConfig,
    "adapter": AdapterConfig,
    "takeover": TakeoverConfig,
    "recovery": RecoveryConfig,
}
#: Options of 0.1 that moved into a section: (section, field).
_MOVED = {
    "connect_timeout": ("links", "connect_timeout"),
    "signature_window": ("links", "offer_window"),
    "room_routing": ("adapter", "room_routing"),
}
_GOSSIP_PRESETS = {"lan": GossipConfig.lan, "local": GossipConfig.local}


def _section(
    name: str, cls: type[Any], given: Any, source: Mapping[str, str], base: Any = None
) -> Any:
    """Build section ``name``: fields from ``given`` (an instance, or a dict of fields) win
    over ``SIOMESH_<NAME>_<FIELD>`` variables, which win over ``base`` (or the defaults)."""
    if isinstance(given, cls):
        return given
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"{name} must be a {cls.__name__} or a dict of its fields")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(given) - set(fields) - ({"preset"} if cls is GossipConfig else set())
    if unknown:
        raise ConfigError(f"unknown {name} option(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for field_name, field in fields.items():
        if given.get(field_name) is not None:
            values[field_name] = given[field_name]
            continue
        env_name = f"{name}_{field_name}"
        raw = source.get(ENV_PREFIX + env_name.upper())
        if raw:
            values[field_name] = _parse_env(env_name, field.type, raw)
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except ValueError as exc:  # GossipConfig validates with ValueError
        raise ConfigError(f"{name}: {exc}") from exc


def _gossip(given: Any, source: Mapping[str, str]) -> GossipConfig:
    if isinstance(given, GossipConfig):
        return given
    preset = (given or {}).get("preset") if isinstance(given, Mapping) else None
    preset = preset or source.get(ENV_PREFIX + "GOSSIP_PRESET") or "lan"
    make = _GOSSIP_PRESETS.get(str(preset).lower())
    if make is None:
        raise ConfigError(f"gossip preset {preset!r}: use one of {', '.join(_GOSSIP_PRESETS)}")
    result: GossipConfig = _section("gossip", GossipConfig, given, source, base=make())
    return result


@dataclasses.dataclass(frozen=True, slots=True)
class MeshConfig:
    """The options of one node. Build it with :meth:`build` (validates, reads the environment).

    Timeouts are seconds. ``None`` for ``max_body_bytes`` means "the wrapped server's
    ``max_http_buffer_size``", the same bound python-engineio applies to a direct POST.
    """

    #: Where peers reach this node (``SIOMESH_NODE_URL``), e.g. ``http://10.0.0.1:8000``.
    node_url: str
    #: Cluster secret (``SIOMESH_SECRET``): authenticates every peer request. >= 16 bytes.
    secret: str
    #: Seed peers' URLs (``SIOMESH_PEERS``, comma separated). May include this node's own URL.
    peers: tuple[str, ...] = ()
    #: Path prefix of the mesh's own endpoints; a balancer should not expose it publicly
    #: except ``health_path``.
    mesh_path: str = "/_siomesh"
    #: Health endpoint for balancers: 200 when serving, 503 when starting or draining.
    health_path: str = "/_siomesh/health"
    #: Extra time granted to a forwarded long-poll beyond the server's
    #: ``ping_interval + ping_timeout``, the longest the owner may hold a GET.
    poll_grace: float = 10.0
    #: Bound on a forwarded POST or other non-poll request (the owner answers those at once).
    request_timeout: float = 15.0
    #: Largest forwarded request body; ``None``: the server's ``max_http_buffer_size``.
    max_body_bytes: int | None = None
    #: Bound on draining (SIGTERM, or :meth:`SioMesh.drain`): leave the cluster, let queued
    #: packets reach their clients, hand every session to peers; then the server stops.
    drain_timeout: float = 3.0
    #: Add ``x-siomesh-served-by`` (the node that served) and ``x-siomesh-via`` (the node that
    #: forwarded) to Engine.IO responses. For demos and debugging; off by default (it reveals
    #: private node addresses to clients).
    served_by_header: bool = False
    #: Peer links (``SIOMESH_LINKS_<FIELD>``): see :class:`LinksConfig`.
    links: LinksConfig = dataclasses.field(default_factory=lambda: LinksConfig())
    #: The adapter (``SIOMESH_ADAPTER_<FIELD>``): see :class:`AdapterConfig`.
    adapter: AdapterConfig = dataclasses.field(default_factory=lambda: AdapterConfig())
    #: Upgrade takeover (``SIOMESH_TAKEOVER_<FIELD>``): see :class:`TakeoverConfig`.
    takeover: TakeoverConfig = dataclasses.field(default_factory=lambda: TakeoverConfig())
    #: Connection state recovery (``SIOMESH_RECOVERY_<FIELD>``): see :class:`RecoveryConfig`.
    recovery: RecoveryConfig = dataclasses.field(default_factory=lambda: RecoveryConfig())
    #: Gossip (``SIOMESH_GOSSIP_PRESET`` = lan, wan or local, then ``SIOMESH_GOSSIP_<FIELD>``
    #: for any :class:`~siomesh.protocol.membership.GossipConfig` field).
    gossip: GossipConfig = dataclasses.field(default_factory=GossipConfig.lan)
    # The four options below matter only without a node_url, when each worker opens its own
    # private peer port and finds the other workers of its machine (siomesh.local_peers).
    #: Where other processes reach this worker's private peer port (``SIOMESH_ADVERTISE_HOST``):
    #: this machine's address for a cluster across machines. Default ``127.0.0.1`` (this
    #: machine only).
    advertise_host: str | None = None
    #: Ports to take the private peer port from, ``LOW-HIGH`` or one port
    #: (``SIOMESH_PEER_PORTS``, e.g. ``9000-9015``): the first free one. Default: any free port.
    peer_ports: str | None = None
    #: The public port that names this machine's rendezvous (``SIOMESH_PUBLIC_PORT``), when it
    #: cannot be read from the server's listening sockets. Default: read from them.
    public_port: int | None = None
    #: The directory of the rendezvous (``SIOMESH_RUNTIME_DIR``). Default
    #: ``$XDG_RUNTIME_DIR/siomesh``, else ``/tmp/siomesh-<uid>``.
    runtime_dir: str | None = None

    @classmethod
    def build(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> MeshConfig:
        """Merge ``overrides`` (``None`` values ignored) over ``SIOMESH_*`` variables, validate.

        Raises :class:`ConfigError` naming the option and the environment variable to set.
        """
        source = os.environ if env is None else env
        overrides = dict(overrides)
        sections: dict[str, dict[str, Any]] = {}
        for old, (section, field_name) in _MOVED.items():
            value = overrides.pop(old, None)
            if value is None:
                raw = source.get(ENV_PREFIX + old.upper())
                value = (
                    _parse_env(old, "float" if old != "room_routing" else "str", raw)
                    if raw
                    else None
                )
            if value is not None:
                sections.setdefault(section, {})[field_name] = value
        values: dict[str, Any] = {}
        for section, section_cls in _SECTIONS.items():
            given = overrides.pop(section, None)
            if isinstance(given, Mapping) or given is None:
                given = {**sections.get(section, {}), **(given or {})}
            values[section] = _section(section, section_cls, given, source)
        values["gossip"] = _gossip(overrides.pop("gossip", None), source)
        for field in dataclasses.fields(cls):
            name = field.name
            if name in values:
                continue
            if overrides.get(name) is not None:
                values[name] = overrides[name]
                continue
            raw = source.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            values[name] = _parse_env(name, field.type, raw)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
        for required in ("node_url", "secret"):
            if not values.get(required):
                raise ConfigError(
                    f"{required} is required: pass {required}=... to SioMesh or set "
                    f"{ENV_PREFIX}{required.upper()}"
                )
        values["secret"] = _secret_text(values["secret"])
        if isinstance(values.get("peers"), str):
            values["peers"] = _split_list(values["peers"])
        values["peers"] = tuple(values.get("peers", ()))
        config = cls(**values)
        config._validate()
        node_url = normalize_url(config.node_url, option="node_url")
        peers = tuple(dict.fromkeys(normalize_url(p, option="peers") for p in config.peers))
        return dataclasses.replace(config, node_url=node_url, peers=peers)

    def _validate(self) -> None:
        if len(self.secret.encode()) < _MIN_SECRET_BYTES:
            raise ConfigError(
                f"secret must be at least {_MIN_SECRET_BYTES} bytes (e.g. {_SECRET_FIX})"
            )
        reason = _placeholder(self.secret)
        if reason is not None:
            raise ConfigError(
                f"secret looks like a placeholder ({reason}): set SIOMESH_SECRET (or secret=) to "
                f"a random value, the same on every node, e.g. from {_SECRET_FIX}"
            )
        for name in ("mesh_path", "health_path"):
            value = getattr(self, name)
            if not value.startswith("/") or value.endswith("/") or "?" in value:
                raise ConfigError(f"{name}: {value!r} must start with '/' and not end with '/'")
        for name in ("poll_grace", "request_timeout", "drain_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0")
        if self.max_body_bytes is not None and self.max_body_bytes <= 0:
            raise ConfigError("max_body_bytes must be > 0")
        if self.peer_ports is not None:
            parse_port_range(self.peer_ports)
        if self.public_port is not None and not 0 < self.public_port < 65536:
            raise ConfigError(f"public_port: {self.public_port} is not a port (1-65535)")


#: The options read before the node_url exists (siomesh.local_peers), with their types.
LOCAL_OPTIONS = {
    "advertise_host": "str",
    "peer_ports": "str",
    "public_port": "int",
    "runtime_dir": "str",
}


def local_options(
    env: Mapping[str, str] | None = None, given: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The options of :data:`LOCAL_OPTIONS`: ``given`` (keyword arguments; ``None`` ignored)
    over ``SIOMESH_<NAME>`` variables; absent ones are ``None``. Validated like
    :meth:`MeshConfig.build` (raises :class:`ConfigError` naming the variable)."""
    source = os.environ if env is None else env
    given = given or {}
    values: dict[str, Any] = {}
    for name, kind in LOCAL_OPTIONS.items():
        value = given.get(name)
        if value is None:
            raw = source.get(ENV_PREFIX + name.upper())
            value = _parse_env(name, kind, raw) if raw else None
        values[name] = value
    if values["peer_ports"] is not None:
        parse_port_range(str(values["peer_ports"]))
    port = values["public_port"]
    if port is not None and not 0 < int(port) < 65536:
        raise ConfigError(f"{ENV_PREFIX}PUBLIC_PORT={port!r} is not a port (1-65535)")
    return values


def parse_port_range(text: str) -> tuple[int, int]:
    """``"9000-9015"`` (or ``"9000"``) as ``(9000, 9015)``; raises :class:`ConfigError`."""
    low_text, _, high_text = text.strip().partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if high_text.strip() else low
    except ValueError:
        raise ConfigError(
            f"{ENV_PREFIX}PEER_PORTS={text!r}: expected a port or a range such as 9000-9015"
        ) from None
    if not 0 < low <= high < 65536:
        raise ConfigError(
            f"{ENV_PREFIX}PEER_PORTS={text!r}: expected LOW-HIGH with 1 <= LOW <= HIGH <= 65535"
        )
    return low, high


def _parse_env(name: str, type_name: Any, raw: str) -> Any:
    kind = str(type_name)
    if kind.startswith("bool"):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a boolean (use 1 or 0)")
    try:
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("int"):
            return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a number") from exc
    if kind.startswith("tuple"):
        return _split_list(raw)
    return raw
