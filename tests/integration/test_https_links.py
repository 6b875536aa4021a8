"""https:// nodes under a private CA: the same link code path as http:// (wss:// links, peers
verified against ``peer_ca_file``); a node that does not trust the CA cannot link."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from siomesh.benchkit.procs import Proc, end_all, stop_all
from tests.harness.nodes import start_node, wait_healthy
from tests.harness.ports import LOOPBACK, free_ports

EIO = "/socket.io/?EIO=4&transport=polling"


@dataclass
class TlsCluster:
    urls: list[str]
    procs: list[Proc]
    ca_file: Path


def _start(tmp: Path, *, trust_ca: list[bool]) -> TlsCluster:
    ca = trustme.CA()
    cert = ca.issue_cert(LOOPBACK)
    key_file, cert_file, ca_file = tmp / "key.pem", tmp / "cert.pem", tmp / "ca.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    ca.cert_pem.write_to_path(str(ca_file))
    other = trustme.CA()  # a CA that signed nothing here
    other_file = tmp / "other-ca.pem"
    other.cert_pem.write_to_path(str(other_file))
    ports = free_ports(len(trust_ca))
    urls = [f"https://{LOOPBACK}:{p}" for p in ports]
    procs: list[Proc] = []
    try:
        for index, port in enumerate(ports):
            procs.append(
                start_node(
                    tmp,
                    f"tls{index}",
                    port,
                    node_url=urls[index],
                    peers=urls,
                    env={
                        "SIOMESH_LINKS_PEER_CA_FILE": str(
                            ca_file if trust_ca[index] else other_file
                        )
                    },
                    uvicorn_args=(
                        "--timeout-graceful-shutdown",
                        "1",
                        "--ssl-keyfile",
                        str(key_file),
                        "--ssl-certfile",
                        str(cert_file),
                    ),
                )
            )
        for proc, url in zip(procs, urls, strict=True):
            wait_healthy(url, proc, verify=_trust(ca_file))
    except BaseException:
        stop_all(list(procs))  # SIGTERM to all at once: the drains overlap
        raise
    return TlsCluster(urls=urls, procs=procs, ca_file=ca_file)


def _trust(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


@pytest.fixture
def trusted(tmp_path: Path) -> Iterator[TlsCluster]:
    cluster = _start(tmp_path, trust_ca=[True, True])
    try:
        yield cluster
    finally:
        end_all(list(cluster.procs))


async def _handshake_then_forward(cluster: TlsCluster) -> httpx.Response:
    a, b = cluster.urls
    async with httpx.AsyncClient(verify=_trust(cluster.ca_file), timeout=10) as http:
        r = await http.get(a + EIO)
        assert r.status_code == 200, r.text
        sid = json.loads(r.text[1:])["sid"]
        r = await http.post(f"{b}{EIO}&sid={sid}", content=b"40")
        if r.status_code != 200:
            return r
        return await http.get(f"{b}{EIO}&sid={sid}")


async def test_forwarding_between_https_nodes_over_wss_links(trusted: TlsCluster) -> None:
    response = await _handshake_then_forward(trusted)
    assert response.status_code == 200, response.text
    assert response.text.startswith("40{"), response.text
    async with httpx.AsyncClient(verify=_trust(trusted.ca_file), timeout=10) as http:
        status = (await http.get(trusted.urls[1] + "/_siomesh/status")).json()
    assert status["stats"]["forwarded"] >= 2
    assert any(link["kind"] == "data" and link["dialled"] for link in status["links"])


async def test_a_node_that_does_not_trust_the_ca_cannot_link(tmp_path: Path) -> None:
    cluster = _start(tmp_path, trust_ca=[True, False])
    try:
        response = await _handshake_then_forward(cluster)
        # node b cannot verify node a's certificate: no link, the client gets the 400 that
        # makes it reconnect, never an unverified connection
        assert response.status_code == 400, response.text
        async with httpx.AsyncClient(verify=_trust(cluster.ca_file), timeout=10) as http:
            status = (await http.get(cluster.urls[1] + "/_siomesh/status")).json()
        assert status["stats"]["link_dial_failures"] >= 1
        assert status["stats"]["forwarded"] == 0
        await asyncio.sleep(0)
    finally:
        end_all(list(cluster.procs))
