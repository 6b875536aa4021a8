"""Trust boundaries of a forwarding node, on real processes: forged forwarding headers are not
trusted, a sid naming a non-member is refused without any outbound connection, and CORS with
credentials survives a forward."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import socketio

from siomesh.auth import PeerSigner
from siomesh.sid import SidKeys, make_sid
from tests.harness.load import close_client
from tests.harness.ports import LOOPBACK
from tests.harness.procs import MeshCluster, start_mesh

ORIGIN = "http://example.test"
SPOOFED = "203.0.113.9"
EIO = "/socket.io/?EIO=4&transport=polling"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshCluster]:
    cluster = start_mesh(
        3,
        tmp_path_factory.mktemp("mesh"),
        env={
            "ECHO_PING_INTERVAL": "5",
            "ECHO_PING_TIMEOUT": "5",
            "ECHO_CORS_ORIGINS": ORIGIN,
        },
    )
    try:
        yield cluster
    finally:
        cluster.stop()


def _packets(body: str) -> list[str]:
    return body.split("\x1e")


async def _handshake(http: httpx.AsyncClient, base: str, headers: dict[str, str]) -> str:
    response = await http.get(base + EIO, headers=headers)
    assert response.status_code == 200, response.text
    open_packet = _packets(response.text)[0]
    assert open_packet.startswith("0"), open_packet
    sid: str = json.loads(open_packet[1:])["sid"]
    return sid


async def _clientaddr_raw(http: httpx.AsyncClient, base: str, sid: str) -> Any:
    """Speak Engine.IO polling by hand: connect the namespace, call ``clientaddr``."""
    url = f"{base}{EIO}&sid={sid}"
    assert (await http.post(url, content=b"40")).status_code == 200
    connected = await http.get(url)
    assert any(p.startswith("40") for p in _packets(connected.text)), connected.text
    assert (await http.post(url, content=b'421["clientaddr"]')).status_code == 200
    for _ in range(5):
        reply = await http.get(url)
        for pkt in _packets(reply.text):
            if pkt.startswith("431"):
                return json.loads(pkt[3:])[0]
    raise AssertionError("no ack for clientaddr")


def _forged(node_url: str, signature: str | None) -> dict[str, str]:
    headers = {
        "x-siomesh-node": node_url,
        "x-siomesh-time": str(int(time.time() * 1000)),
        "x-siomesh-client": f"{SPOOFED}:4444",
    }
    if signature is not None:
        headers["x-siomesh-signature"] = signature
    return headers


@pytest.mark.parametrize("signature", ["0" * 64, "", None], ids=["bad", "empty", "missing"])
async def test_forged_forwarding_headers_are_not_trusted(
    mesh: MeshCluster, signature: str | None
) -> None:
    target, claimed = mesh.nodes[0], mesh.nodes[1]
    client = socketio.AsyncClient(reconnection=False)
    try:
        await client.connect(
            target.url, transports=["polling"], headers=_forged(claimed.url, signature)
        )
        seen = await client.call("clientaddr", timeout=10)
    finally:
        await close_client(client)
    assert seen["client"][0] == LOOPBACK, seen
    assert SPOOFED not in json.dumps(seen)
    # The unverified claim is removed before the app sees the request.
    assert seen["mesh-headers"] == [], seen


async def test_correctly_signed_forward_is_trusted(mesh: MeshCluster) -> None:
    """Positive control: the same claim, signed with the cluster secret, is believed."""
    target, sender = mesh.nodes[0], mesh.nodes[1]
    signer = PeerSigner(mesh.secret)
    path, query = "/socket.io/", "EIO=4&transport=polling"
    headers = signer.sign(
        method="GET",
        path=path,
        query=query,
        node_url=sender.url,
        now=time.time(),
        client=f"{SPOOFED}:4444",
    )
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        sid = await _handshake(http, target.url, headers)
        seen = await _clientaddr_raw(http, target.url, sid)
    assert seen["client"] == [SPOOFED, 4444], seen


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen(8)
    sock.setblocking(False)
    return sock


async def test_sid_of_non_member_is_rejected_without_outbound_connection(
    mesh: MeshCluster,
) -> None:
    node = mesh.nodes[0]
    keys = SidKeys.from_secret(mesh.secret)
    trap = _listener()
    try:
        stranger = f"http://{LOOPBACK}:{trap.getsockname()[1]}"
        sids = {
            "non-member tag": make_sid(keys, stranger, time.time_ns(), secrets.token_bytes(12)),
            "other secret": make_sid(
                SidKeys.from_secret("another-cluster-secret-0123456789"),
                mesh.nodes[1].url,
                time.time_ns(),
                secrets.token_bytes(12),
            ),
        }
        before = mesh.status(node)["stats"]
        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            for what, sid in sids.items():
                started = time.perf_counter()
                # Forged forwarding headers must not turn the refusal into "serve here".
                response = await http.get(
                    f"{node.url}{EIO}&sid={sid}", headers=_forged(mesh.nodes[1].url, "0" * 64)
                )
                took = time.perf_counter() - started
                assert response.status_code == 400, (what, response.text)
                assert "Invalid session" in response.text, (what, response.text)
                assert took < 1.0, (what, took)
                post = await http.post(f"{node.url}{EIO}&sid={sid}", content=b"40")
                assert post.status_code == 400, (what, post.text)
        after = mesh.status(node)["stats"]
        with pytest.raises(BlockingIOError):
            trap.accept()  # nobody dialled the address named by the sid's tag
    finally:
        trap.close()
    assert after["forwarded"] == before["forwarded"], (before, after)
    assert after["forward_errors"] == before["forward_errors"], (before, after)
    assert after["rejected"] >= before["rejected"] + 2 * len(sids), (before, after)


async def test_cors_with_credentials_survives_a_forward(mesh: MeshCluster) -> None:
    owner, forwarder = mesh.nodes[0], mesh.nodes[2]
    headers = {"Origin": ORIGIN, "Cookie": "io=abc; session=xyz"}

    def assert_cors(response: httpx.Response, what: str) -> None:
        assert response.status_code == 200, (what, response.status_code, response.text)
        assert response.headers.get("access-control-allow-origin") == ORIGIN, (
            what,
            dict(response.headers),
        )
        assert response.headers.get("access-control-allow-credentials") == "true", (
            what,
            dict(response.headers),
        )

    before = mesh.status(forwarder)["stats"]["forwarded"]
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        handshake = await http.get(owner.url + EIO, headers=headers)
        assert_cors(handshake, "handshake")
        sid = json.loads(_packets(handshake.text)[0][1:])["sid"]
        url = f"{forwarder.url}{EIO}&sid={sid}"
        assert_cors(await http.post(url, content=b"40", headers=headers), "forwarded POST")
        got = await http.get(url, headers=headers)
        assert_cors(got, "forwarded GET")
        assert got.text.startswith("40"), got.text
        preflight = await http.options(
            url,
            headers={
                **headers,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.headers.get("access-control-allow-origin") == ORIGIN
        assert preflight.headers.get("access-control-allow-credentials") == "true"
        # A foreign origin is refused even through the forward.
        evil = await http.get(url, headers={"Origin": "http://evil.test"})
        assert evil.status_code == 400, evil.text
        assert evil.headers.get("access-control-allow-origin") is None
    assert mesh.status(forwarder)["stats"]["forwarded"] >= before + 2
