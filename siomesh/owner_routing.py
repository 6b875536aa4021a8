"""Owner-aware balancer configs: the balancer reads a sid's owner from its first characters.

Every sid starts with its owner's node tag (:func:`siomesh.sid.node_tag`: 4 characters, a keyed
hash of the node's URL, stable across restarts). A balancer that can match the ``sid`` query
parameter (nginx ``map $arg_sid``, HAProxy ``urlp(sid)``, Caddy ``vars_regexp`` on
``{http.request.uri.query.sid}``) sends every request after the
handshake straight to its owner: no cookie, no affinity table, an even spread behind NAT, and
no forward. Handshakes (no sid) and tags the config does not know (a node added since) go
round-robin, and the mesh forwards them as it always does; an owner that is down is skipped
(nginx: its ``backup`` servers; HAProxy: ``use-server`` is ignored for a server that is down;
Caddy: the owner's upstream list has the owner first and ``lb_policy first``),
and the node that gets the request forwards it or answers the 400 that makes the client
reconnect. So the config can be stale without breaking anything: it only costs forwards.

Pure text generation: no I/O here (the CLI reads a running node's members).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from .sid import SidKeys, node_tag

__all__ = [
    "KINDS",
    "Backend",
    "backends",
    "caddy_config",
    "haproxy_config",
    "nginx_config",
    "render",
]

#: The balancers this module writes configs for.
KINDS = ("nginx", "haproxy", "caddy")


@dataclass(frozen=True, slots=True)
class Backend:
    """One node as the balancer sees it: its ``node_url``, the ``host:port`` the balancer
    connects to, and the tag its sids start with."""

    url: str
    address: str
    tag: str


def _address(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not a node URL (http://host:port)")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def backends(
    secret: str, node_urls: Sequence[str], addresses: Sequence[str] | None = None
) -> list[Backend]:
    """The backends for ``node_urls`` (each node's ``node_url``, exactly as configured: the tag
    is computed from it) under the cluster ``secret``. ``addresses`` (``host:port``, same
    order) where the balancer reaches a node elsewhere than its ``node_url``. Raises
    ValueError for a malformed URL, a duplicate, or two nodes whose tags collide (about 1 in
    16 million per pair: then leave one of them out; the mesh forwards its sessions)."""
    if not node_urls:
        raise ValueError("no nodes given")
    if addresses is not None and len(addresses) != len(node_urls):
        raise ValueError("give one address per node URL")
    keys = SidKeys.from_secret(secret)
    out: list[Backend] = []
    seen: dict[str, str] = {}
    for index, url in enumerate(node_urls):
        url = url.rstrip("/")
        tag = node_tag(keys, url)
        if url in (b.url for b in out):
            raise ValueError(f"{url} is listed twice")
        if tag in seen:
            raise ValueError(f"{url} and {seen[tag]} have the same tag {tag}: leave one out")
        seen[tag] = url
        address = addresses[index] if addresses is not None else _address(url)
        out.append(Backend(url=url, address=address, tag=tag))
    return out


def nginx_config(nodes: Sequence[Backend], *, listen: str, run_dir: str | None = None) -> str:
    """A complete nginx config: round-robin as in ``examples/balancers/nginx.conf``, plus one
    upstream per owner (the owner first, the others as ``backup``) chosen by the sid's tag.
    ``run_dir`` puts the pid file, logs and temp files there (for tests and benchmarks)."""
    paths = ""
    if run_dir is not None:
        paths = f"pid {run_dir}/nginx.pid;\nerror_log {run_dir}/error.log warn;\n"
    temp = ""
    if run_dir is not None:
        temp = "".join(
            f"    {name}_temp_path {run_dir}/{name};\n"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
    server_opts = "max_fails=1 fail_timeout=1s"
    keepalive = "        keepalive 64;\n        keepalive_timeout 2s;\n"
    upstreams = ["    upstream siomesh {\n"]
    upstreams += [f"        server {n.address} {server_opts};\n" for n in nodes]
    upstreams += [keepalive, "    }\n"]
    mapping = []
    for index, owner in enumerate(nodes, start=1):
        upstreams.append(f"    # sids of {owner.url} start with {owner.tag}\n")
        upstreams.append(f"    upstream siomesh_owner{index} {{\n")
        upstreams.append(f"        server {owner.address} {server_opts};\n")
        upstreams += [f"        server {n.address} backup;\n" for n in nodes if n is not owner]
        upstreams += [keepalive, "    }\n"]
        mapping.append(f'        "~^{owner.tag}" siomesh_owner{index};\n')
    return (
        "# nginx in front of siomesh nodes, OWNER-AWARE: a request that carries a sid goes to\n"
        "# the node whose tag starts the sid; handshakes and unknown tags go round-robin and the\n"
        "# mesh forwards them. Generated by `siomesh balancer nginx`; see docs/deployment.md.\n"
        "\n"
        "worker_processes 2;\n"
        f"{paths}"
        "\n"
        "# 2 to 4 connections per client: about 5,000 to 8,000 clients (docs/deployment.md)\n"
        "worker_rlimit_nofile 20000;\n"
        "events {\n    worker_connections 8192;\n}\n"
        "\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp}"
        "    client_max_body_size 2m;\n"
        "\n"
        f"{''.join(upstreams)}"
        "\n"
        "    # The owner's tag is the sid's first 4 characters (no sid: round-robin).\n"
        "    map $arg_sid $siomesh_upstream {\n"
        "        default siomesh;\n"
        f"{''.join(mapping)}"
        "    }\n"
        "\n"
        "    map $http_upgrade $connection_upgrade {\n"
        "        default upgrade;\n"
        "        ''      '';\n"
        "    }\n"
        "\n"
        "    server {\n"
        f"        listen {listen};\n"
        "        proxy_http_version 1.1;\n"
        "        proxy_set_header Upgrade $http_upgrade;\n"
        "        proxy_set_header Connection $connection_upgrade;\n"
        "        proxy_set_header Host $host;\n"
        "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "        proxy_set_header X-Forwarded-Proto $scheme;\n"
        "        proxy_read_timeout 120s;\n"
        "        proxy_send_timeout 120s;\n"
        "        proxy_connect_timeout 2s;\n"
        "        proxy_buffering off;\n"
        "        # an owner that refuses connections is skipped (its backups forward or answer\n"
        "        # the 400 that makes the client reconnect); a POST is never sent twice\n"
        "        proxy_next_upstream error timeout;\n"
        "        proxy_next_upstream_tries 3;\n"
        "\n"
        "        location / {\n"
        "            proxy_pass http://$siomesh_upstream;\n"
        "        }\n"
        "        location ^~ /_siomesh/ {\n"
        "            return 404;\n"
        "        }\n"
        "        location = /_siomesh/health {\n"
        "            proxy_pass http://siomesh;\n"
        "        }\n"
        "    }\n"
        "}\n"
    )


def haproxy_config(nodes: Sequence[Backend], *, listen: str) -> str:
    """A complete HAProxy config: round-robin with active health checks as in
    ``examples/balancers/haproxy.cfg``, plus ``use-server`` by the sid's tag (ignored while
    that server is down or draining: its health check answers 503)."""
    rules = []
    servers = []
    for index, node in enumerate(nodes, start=1):
        rules.append(f"    # sids of {node.url} start with {node.tag}\n")
        rules.append(f"    acl sid_node{index} urlp(sid) -m beg -- {node.tag}\n")
        rules.append(f"    use-server node{index} if sid_node{index}\n")
        servers.append(f"    server node{index} {node.address}\n")
    return (
        "# HAProxy in front of siomesh nodes, OWNER-AWARE: a request that carries a sid goes to\n"
        "# the node whose tag starts the sid; handshakes and unknown tags go round-robin and the\n"
        "# mesh forwards them. Generated by `siomesh balancer haproxy`; see docs/deployment.md.\n"
        "\n"
        "global\n    # one or two connections per client (docs/deployment.md)\n    maxconn 9000\n"
        "\n"
        "defaults\n"
        "    mode http\n"
        "    option http-keep-alive\n"
        "    timeout connect 2s\n"
        "    timeout client 120s\n"
        "    timeout server 120s\n"
        "    timeout tunnel 120s\n"
        "    timeout http-keep-alive 10s\n"
        "    timeout http-request 10s\n"
        "    retries 3\n"
        "    retry-on conn-failure\n"
        "    option redispatch 1\n"
        "\n"
        "frontend siomesh_in\n"
        f"    bind {listen}\n"
        "    acl siomesh_internal path,url_dec -m beg /_siomesh/\n"
        "    acl siomesh_health path,url_dec -m str /_siomesh/health\n"
        "    http-request deny deny_status 404 if siomesh_internal !siomesh_health\n"
        "    default_backend siomesh\n"
        "\n"
        "backend siomesh\n"
        "    balance roundrobin\n"
        "    option forwardfor\n"
        "    option httpchk GET /_siomesh/health\n"
        "    http-check expect status 200\n"
        "    default-server check inter 1s fall 2 rise 2\n"
        f"{''.join(rules)}"
        f"{''.join(servers)}"
    )


#: What every ``reverse_proxy`` of the Caddy config says, as in ``examples/balancers/Caddyfile``.
_CADDY_PROXY_OPTIONS = (
    "\t\t\t# a refused node is skipped and the request tried on the next one; Caddy resends\n"
    "\t\t\t# a request that reached a node only if it is a GET, so a POST is never sent twice\n"
    "\t\t\tlb_try_duration 2s\n"
    "\t\t\tlb_try_interval 100ms\n"
    "\t\t\tfail_duration 5s\n"
    "\t\t\t# out while /_siomesh/health is not 2xx (503: starting, draining)\n"
    "\t\t\thealth_uri /_siomesh/health\n"
    "\t\t\thealth_interval 2s\n"
    "\t\t\thealth_timeout 1s\n"
    "\t\t\tflush_interval -1\n"
    "\t\t\ttransport http {\n"
    "\t\t\t\tdial_timeout 2s\n"
    "\t\t\t\tresponse_header_timeout 120s\n"
    "\t\t\t\tkeepalive 2s\n"
    "\t\t\t\tkeepalive_idle_conns_per_host 1024\n"
    "\t\t\t}\n"
)


def _caddy_site(listen: str) -> tuple[str, str]:
    """The site address and the ``bind`` line for ``listen`` (``host:port``). The site has
    no host: Caddy would otherwise match requests by their ``Host`` header against it."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen {listen!r}: expected host:port")
    host = host.strip("[]")
    bind = "" if host in ("", "*", "0.0.0.0", "::") else f"\tbind {host}\n"
    return f"http://:{port}", bind


def caddy_config(nodes: Sequence[Backend], *, listen: str) -> str:
    """A complete Caddyfile: round-robin as in ``examples/balancers/Caddyfile``, plus one
    ``reverse_proxy`` per owner, chosen by the sid's tag (``vars_regexp`` on the ``sid`` query
    parameter), whose upstreams are the owner first and the other nodes after it with
    ``lb_policy first``: the others take its requests only while it is down (they forward them,
    or answer the 400 that makes the client reconnect). Inside ``route``, so the order is the
    order written."""
    site, bind = _caddy_site(listen)
    matchers = []
    proxies = []
    for index, owner in enumerate(nodes, start=1):
        order = [owner] + [n for n in nodes if n is not owner]
        matchers.append(f"\t# sids of {owner.url} start with {owner.tag}\n")
        matchers.append(
            f"\t@owner{index} vars_regexp {{http.request.uri.query.sid}} ^{owner.tag}\n"
        )
        proxies.append(
            f"\t\treverse_proxy @owner{index} {' '.join(n.address for n in order)} {{\n"
            "\t\t\tlb_policy first\n"
            f"{_CADDY_PROXY_OPTIONS}"
            "\t\t}\n"
        )
    return (
        "# Caddy in front of siomesh nodes, OWNER-AWARE: a request that carries a sid goes to\n"
        "# the node whose tag starts the sid; handshakes and unknown tags go round-robin and the\n"
        "# mesh forwards them. Generated by `siomesh balancer caddy`; see docs/deployment.md.\n"
        "# Run: caddy run --config Caddyfile --adapter caddyfile\n"
        "\n"
        "{\n"
        "\tadmin off\n"
        "\tauto_https off\n"
        "\tgrace_period 10s\n"
        "}\n"
        "\n"
        f"{site} {{\n"
        f"{bind}"
        "\t@siomesh_internal {\n"
        "\t\tpath /_siomesh/*\n"
        "\t\tnot path /_siomesh/health\n"
        "\t}\n"
        f"{''.join(matchers)}"
        "\troute {\n"
        "\t\trespond @siomesh_internal 404\n"
        f"{''.join(proxies)}"
        f"\t\treverse_proxy {' '.join(n.address for n in nodes)} {{\n"
        "\t\t\tlb_policy round_robin\n"
        f"{_CADDY_PROXY_OPTIONS}"
        "\t\t}\n"
        "\t}\n"
        "}\n"
    )


def render(kind: str, nodes: Sequence[Backend], *, listen: str, run_dir: str | None = None) -> str:
    """The config of balancer ``kind`` (one of :data:`KINDS`)."""
    if kind == "nginx":
        return nginx_config(nodes, listen=listen, run_dir=run_dir)
    if kind == "haproxy":
        return haproxy_config(nodes, listen=listen)
    if kind == "caddy":
        return caddy_config(nodes, listen=listen)
    raise ValueError(f"unknown balancer {kind!r}: one of {', '.join(KINDS)}")
