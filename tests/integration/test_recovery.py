"""Connection state recovery (siomesh.recovery) with the npm ``socket.io-client``, through nginx
round-robin onto 3 nodes with ``SIOMESH_RECOVERY_ENABLED=1``.

Clients in one room receive a paced stream of room broadcasts; some have their transport cut
in the middle (the engine closed without a goodbye, as a dropped network does). They reconnect
to any node and come back recovered (``socket.recovered``), with the same ``socket.id``, still
in the room, and every broadcast arrives exactly once, in order.

A rolling restart (drain, exit, start again, one node at a time) under the same load: every
client recovers each time its node goes, and nothing is missed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from siomesh.benchkit.procs import Proc, stop_all
from tests.conftest import require_binary
from tests.e2e import NODE_DIR, node_client
from tests.harness.balancers import Balancer, start_balancer
from tests.harness.nodes import start_node, wait_healthy
from tests.harness.ports import LOOPBACK, free_ports
from tests.harness.procs import MeshCluster, start_mesh

ENV = {"SIOMESH_GOSSIP_PRESET": "local", "SIOMESH_RECOVERY_ENABLED": "1"}


class Cluster:
    def __init__(self, tmp: Path, urls: list[str], procs: list[Proc], lb: Balancer) -> None:
        self.tmp = tmp
        self.urls = urls
        self.procs = procs
        self.lb = lb

    def stats(self, key: str) -> int:
        total = 0
        for url in self.urls:
            with contextlib.suppress(httpx.HTTPError, KeyError):
                total += int(httpx.get(url + "/_siomesh/status", timeout=5).json()["stats"][key])
        return total


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    require_binary("nginx")
    ports = free_ports(3)
    urls = [f"http://{LOOPBACK}:{p}" for p in ports]
    procs: list[Proc] = []
    lb: Balancer | None = None
    made: Cluster | None = None
    try:
        for index, port in enumerate(ports):
            procs.append(
                start_node(
                    tmp_path,
                    f"node{index}",
                    port,
                    node_url=urls[index],
                    peers=urls,
                    env=ENV,
                    uvicorn_args=(),
                )
            )
        for proc, url in zip(procs, urls, strict=True):
            wait_healthy(url, proc)
        lb = start_balancer("nginx", [u.removeprefix("http://") for u in urls], tmp_path / "lb")
        made = Cluster(tmp_path, urls, procs, lb)
        yield made
    finally:
        if lb is not None:
            lb.stop()
        stop_all(
            list(made.procs if made is not None else procs)
        )  # SIGTERM to all at once: the drains overlap


async def _run_clients(
    node: str,
    url: str,
    clients: int,
    cut: int,
    count: int,
    interval_ms: int,
    cuts: int,
    transports: str = "polling,websocket",
) -> dict[str, Any]:
    args = [str(clients), str(cut), str(count), str(interval_ms), str(cuts), transports]
    done = await asyncio.to_thread(
        subprocess.run,
        [node, "recovery.js", url, *args],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=150,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] is None, result
    return result


def _check_everyone(result: dict[str, Any]) -> None:
    """Everyone received the same broadcasts, each once, in order; none is missing."""
    try:
        _check_each(result)
    except AssertionError:
        for client in result["per"]:
            # each client's last events, with how many the sender (client 0) had sent then
            print("client", client["index"], client["events"])  # shown by pytest on failure
        raise


def _out_of_order(got: list[int]) -> list[tuple[int, list[int]]]:
    """Where ``got`` is not 0, 1, 2, ...: (position, the values around it), at most 5 places."""
    places = [i for i, value in enumerate(got) if value != i][:5]
    return [(i, got[max(0, i - 2) : i + 3]) for i in places]


def _check_each(result: dict[str, Any]) -> None:
    sequences = {tuple(c["got"]) for c in result["per"]}
    assert len(sequences) == 1, [
        (
            c["index"], c["received"], c["connects"], c["recovered"], c["connected"],
            _out_of_order(c["got"]),
        )
        for c in result["per"]
    ]  # fmt: skip
    got = list(sequences.pop())
    assert got == sorted(set(got)), got  # once each, in order
    # the sender is never cut here: nothing may be missing
    missing = sorted(set(range(result["count"])) - set(got))
    # the sender's (client 0) events say how many it had sent when it was disconnected
    assert not missing, missing
    for client in result["per"]:
        summary = {k: v for k, v in client.items() if k != "got"}
        assert client["connected"], summary
        assert client["offsetsSeen"] == client["received"], summary
        assert len(set(client["ids"])) == 1, client  # the same socket.id throughout
        # every reconnection was a recovery (the first connect is not)
        assert client["recovered"][0] is False, client
        assert all(client["recovered"][1:]), client


@pytest.mark.parametrize("transports", ["polling,websocket", "polling"])
async def test_cut_clients_recover_on_any_node_and_miss_nothing(
    cluster: Cluster, transports: str
) -> None:
    """Half of 12 npm clients have their engine closed twice mid-stream. On WebSocket that
    closes the socket; on polling the JS client POSTs an Engine.IO CLOSE first, the same it
    sends when a poll fails, which python-engineio calls a client disconnect (it was not kept,
    and polling clients came back unrecovered)."""
    node = node_client()
    result = await _run_clients(node, cluster.lb.url, 12, 6, 80, 40, 2, transports)
    _check_everyone(result)
    victims = [c for c in result["per"] if c["victim"]]
    assert all(c["connects"] == 3 for c in victims), victims  # two cuts each
    assert cluster.stats("recovered") >= len(victims) * 2
    assert cluster.stats("recovery_misses") == 0


@pytest.mark.parametrize("transports", ["polling,websocket", "polling"])
async def test_a_rolling_restart_loses_no_broadcast_and_every_client_recovers(
    cluster: Cluster, transports: str
) -> None:
    """Every node in turn drains (SIGTERM), exits and starts again on its address, while 8
    clients receive a paced stream of room broadcasts: each client comes back recovered, with
    the same id, every time its node goes, and every broadcast arrives once, in order. Also
    with every client on HTTP long-polling (the sender's emits are POSTs that can cross the
    drain on the wire)."""
    node = node_client()
    ports = [int(u.rsplit(":", 1)[1]) for u in cluster.urls]
    clients = asyncio.ensure_future(
        _run_clients(node, cluster.lb.url, 8, 0, 500, 40, 1, transports)
    )
    try:
        await asyncio.sleep(2.0)
        for index, port in enumerate(ports):
            proc = cluster.procs[index]
            proc.terminate()
            for _ in range(200):  # bounded: a drained node exits within drain_timeout + 1 s
                if not proc.alive():
                    break
                await asyncio.sleep(0.05)
            assert not proc.alive(), proc.log_tail()
            cluster.procs[index] = start_node(
                cluster.tmp, f"node{index}-again", port, node_url=cluster.urls[index],
                peers=cluster.urls, env=ENV, uvicorn_args=(),
            )  # fmt: skip
            await asyncio.to_thread(wait_healthy, cluster.urls[index], cluster.procs[index])
            assert not clients.done()  # the stream outlasts the restarts
        result = await clients
    finally:
        if not clients.done():
            clients.cancel()
    _check_everyone(result)
    assert all(c["connects"] >= 2 for c in result["per"])  # everybody's node went at least once
    assert cluster.stats("recovery_misses") == 0


# -- abuse (issue 18): forged pids cost nothing, a wrong offset destroys nothing --------------
#
# Raw Socket.IO over a WebSocket, straight to one node (no balancer): the test picks which
# node keeps a session and which one is asked to recover it, and reads the CONNECT answer's
# ``pid`` (python-socketio's client does not expose it).


class RawClient:
    """One Engine.IO v4 WebSocket session to one node, speaking Socket.IO packets by hand."""

    def __init__(self, ws: Any, connected: dict[str, Any], connect_s: float) -> None:
        self.ws = ws
        #: the CONNECT answer: ``{"sid": ..., "pid": ...}``
        self.connected = connected
        #: seconds from sending CONNECT to its answer
        self.connect_s = connect_s
        self.events: list[list[Any]] = []
        self._acks = 0

    @classmethod
    async def open(cls, url: str, auth: dict[str, Any] | None = None) -> RawClient:
        from websockets.asyncio.client import connect

        ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        ws = await connect(ws_url, open_timeout=10, max_size=None)
        opened = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(opened, str) and opened.startswith("0"), opened
        started = time.perf_counter()
        await ws.send("40" + (json.dumps(auth) if auth is not None else ""))
        client = cls(ws, {}, 0.0)
        while True:
            message = await client._next()
            if message.startswith("40"):
                client.connect_s = time.perf_counter() - started
                client.connected = json.loads(message[2:])
                return client
            assert not message.startswith("44"), message  # CONNECT_ERROR

    @property
    def sid(self) -> str:
        return str(self.connected["sid"])

    @property
    def pid(self) -> str:
        return str(self.connected["pid"])

    async def _next(self) -> str:
        while True:
            message = await asyncio.wait_for(self.ws.recv(), 10)
            assert isinstance(message, str), message
            if message == "2":  # ping
                await self.ws.send("3")
                continue
            if message.startswith("42"):
                self.events.append(json.loads(message[2:]))
                continue
            return message

    async def call(self, *args: Any) -> Any:
        """Emit an event with an ack id; return the ack's arguments."""
        self._acks += 1
        ack_id = self._acks
        await self.ws.send(f"42{ack_id}" + json.dumps(list(args)))
        while True:
            message = await self._next()
            if message.startswith(f"43{ack_id}["):
                return json.loads(message[2 + len(str(ack_id)) :])

    async def wait_event(self, name: str, predicate: Any = None) -> list[Any]:
        for _ in range(200):
            for event in self.events:
                if event[0] == name and (predicate is None or predicate(event)):
                    return event
            with contextlib.suppress(asyncio.TimeoutError):
                message = await asyncio.wait_for(self._next(), 0.05)
                raise AssertionError(f"unexpected packet {message!r}")
        raise AssertionError(f"no {name!r} event: {self.events}")

    async def cut(self) -> None:
        """Close the transport with no Socket.IO goodbye: the node keeps the session."""
        await self.ws.close()

    async def leave(self) -> None:
        """A clean Socket.IO disconnect: nothing is kept."""
        await self.ws.send("41")
        await self.ws.close()

    async def engine_close(self) -> None:
        """An Engine.IO CLOSE with no Socket.IO goodbye, then the transport closed: what the JS
        client sends as it tears its engine down after a transport error (a failed poll)
        before it reconnects, or when its Manager is closed."""
        await self.ws.send("1")
        await self.ws.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshCluster]:
    cluster = start_mesh(3, tmp_path_factory.mktemp("recovery-abuse"), env=ENV)
    try:
        # wait until every node links to every other (the first recovery call would
        # otherwise pay for a link handshake)
        for _ in range(100):
            if all(len(cluster.status(n)["links"]) >= 2 for n in cluster.nodes):
                break
            time.sleep(0.1)
        yield cluster
    finally:
        cluster.end()


def _sums(mesh: MeshCluster, key: str) -> int:
    return sum(mesh.stats(key).values())


async def _wait_stat(mesh: MeshCluster, key: str, at_least: int) -> None:
    for _ in range(200):
        if _sums(mesh, key) >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} stayed below {at_least}: {mesh.stats(key)}")


def _forged_pids(count: int, genuine: list[str]) -> list[str]:
    """pids a client could send: a member's pid with another MAC (it names that member),
    random sids of the right shape, and junk."""
    out = []
    for i in range(count):
        if i % 3 == 0:
            real = genuine[i % len(genuine)]
            out.append(real[:-1] + ("A" if real[-1] != "A" else "B"))
        elif i % 3 == 1:
            out.append(base64.urlsafe_b64encode(secrets.token_bytes(21)).decode())
        else:
            out.append(secrets.token_urlsafe(8 + i))
    return out


async def test_a_forged_pid_is_answered_at_once_without_asking_any_peer(
    mesh: MeshCluster,
) -> None:
    """No recovery call at all (not one link frame for it), whatever the forged pid names; the
    client gets a new session at once."""
    url = mesh.nodes[0].url
    tries = 30
    plain = [(await RawClient.open(n.url)) for n in mesh.nodes for _ in range(2)]
    for client in plain:
        await client.leave()
    forged = _sums(mesh, "recovery_forged_pids")
    before_fetches = _sums(mesh, "recovery_fetches_sent")
    before_frames = mesh.stats("link_frames_sent")
    started = time.perf_counter()
    latencies = []
    for pid in _forged_pids(tries, [c.pid for c in plain]):
        client = await RawClient.open(url, {"pid": pid, "offset": "AAAAAAAA.1"})
        assert client.pid != pid  # a fresh session, as python-socketio gives for an unknown pid
        latencies.append(client.connect_s)
        await client.leave()
    elapsed = time.perf_counter() - started
    frames = {u: n - before_frames[u] for u, n in mesh.stats("link_frames_sent").items()}
    latencies.sort()
    median = latencies[len(latencies) // 2]
    plain_median = sorted(c.connect_s for c in plain)[len(plain) // 2]
    print(
        f"forged pids: {tries} CONNECTs in {elapsed * 1000:.0f} ms; CONNECT answered in "
        f"{median * 1000:.2f} ms median, {latencies[-1] * 1000:.2f} ms max (a plain CONNECT: "
        f"{plain_median * 1000:.2f} ms); link frames sent meanwhile (gossip included): {frames}"
    )
    assert _sums(mesh, "recovery_forged_pids") == forged + tries
    assert _sums(mesh, "recovery_fetches_sent") == before_fetches  # no call, to any peer
    # generous: the old cost was a 300 ms wait plus two rounds of calls to every peer
    assert median < 0.1, latencies


async def test_a_genuine_pid_with_no_session_costs_one_call_to_one_peer(
    mesh: MeshCluster,
) -> None:
    owner, asked = mesh.nodes[1].url, mesh.nodes[0].url
    gone = await RawClient.open(owner)
    await gone.leave()  # a clean disconnect: nothing kept
    before = mesh.stats("recovery_fetches_sent")
    client = await RawClient.open(asked, {"pid": gone.pid, "offset": "AAAAAAAA.1"})
    assert client.sid != gone.sid
    await client.leave()
    after = mesh.stats("recovery_fetches_sent")
    sent = {u: after[u] - before[u] for u in after}
    assert sent == {u: (1 if u == asked else 0) for u in after}, sent


async def _seen_one_event(
    url: str, other_url: str, prefix: str
) -> tuple[str, RawClient, RawClient, str]:
    """A client on ``url`` and another on ``other_url`` in a fresh room; the other said "m1"
    there and the first got it: (room, client, other, the offset of "m1")."""
    room = f"{prefix}-{secrets.token_hex(4)}"
    client = await RawClient.open(url)
    other = await RawClient.open(other_url)
    assert await client.call("join", room) == [True]
    assert await other.call("join", room) == [True]
    assert await other.call("say", {"room": room, "message": "m1"}) == [True]
    seen = await client.wait_event("said", lambda e: e[1]["message"] == "m1")
    offset = seen[-1]
    assert isinstance(offset, str) and "." in offset
    return room, client, other, offset


async def test_a_wrong_offset_leaves_the_session_recoverable(mesh: MeshCluster) -> None:
    a, b, c = (n.url for n in mesh.nodes)
    room, victim, other, offset = await _seen_one_event(a, b, "abuse")
    kept = _sums(mesh, "recovery_kept")
    await victim.cut()
    await _wait_stat(mesh, "recovery_kept", kept + 1)
    # missed while away
    assert await other.call("say", {"room": room, "message": "m2"}) == [True]
    recovered = _sums(mesh, "recovered")
    base, _, counter = offset.rpartition(".")
    wrong = [
        f"{base}.{int(counter, 16) + 0x100000:x}",  # well-formed, never logged
        "not-an-offset",
        "",
    ]
    for node, bad in [(b, wrong[0]), (a, wrong[0]), (c, wrong[1]), (b, wrong[2])]:
        intruder = await RawClient.open(node, {"pid": victim.pid, "offset": bad})
        assert intruder.sid != victim.sid, (node, bad)
        await intruder.leave()
    assert _sums(mesh, "recovered") == recovered
    back = await RawClient.open(c, {"pid": victim.pid, "offset": offset})
    assert (back.sid, back.pid) == (victim.sid, victim.pid)
    missed = await back.wait_event("said", lambda e: e[1]["message"] == "m2")
    assert missed[-1] != offset
    assert _sums(mesh, "recovered") == recovered + 1
    await back.leave()
    await other.leave()


async def test_an_engine_close_without_a_socketio_goodbye_is_recoverable(
    mesh: MeshCluster,
) -> None:
    """The JS client, when a poll fails (a 502 from the balancer, a node between it and the
    session's owner gone), closes its engine with an Engine.IO CLOSE packet, which may well
    reach the owner, then reconnects and asks for recovery. python-engineio reads that CLOSE
    as "client disconnect", like a Socket.IO goodbye; the Node server calls it "transport
    close", which it keeps. It is kept here too: only a Socket.IO DISCONNECT for the namespace
    is a goodbye (that one stays unrecoverable: ``leave``)."""
    a, b = mesh.nodes[0].url, mesh.nodes[1].url
    room, client, other, offset = await _seen_one_event(a, b, "close")
    kept = _sums(mesh, "recovery_kept")
    await client.engine_close()
    await _wait_stat(mesh, "recovery_kept", kept + 1)
    assert await other.call("say", {"room": room, "message": "m2"}) == [True]
    back = await RawClient.open(b, {"pid": client.pid, "offset": offset})
    assert (back.sid, back.pid) == (client.sid, client.pid)
    await back.wait_event("said", lambda e: e[1]["message"] == "m2")
    # a Socket.IO goodbye, then the same CLOSE: nothing kept, a new session
    kept = _sums(mesh, "recovery_kept")
    await back.ws.send("41")
    await back.engine_close()
    await asyncio.sleep(0.3)
    assert _sums(mesh, "recovery_kept") == kept
    again = await RawClient.open(a, {"pid": back.pid, "offset": offset})
    assert again.sid != back.sid
    await again.leave()
    await other.leave()


async def test_a_drain_whose_peers_do_not_answer_still_ends_in_bounded_time(
    cluster: Cluster,
) -> None:
    """A node that drains while both its peers are frozen (SIGSTOP: alive for gossip a while
    longer, answering nothing) cannot hand its kept sessions over. Its hand-off tries within
    what is left of the drain (at least :data:`~siomesh.node.HANDOFF_FINAL`), then says so
    (a WARNING, ``recovery_handoff_failed``), and the node exits in about ``drain_timeout``.
    Before, the hand-off waited ``request_timeout`` (15 s) per successor, until the SIGTERM
    handler's bound cut the whole drain off with a traceback and no word of the sessions."""
    client = await RawClient.open(cluster.urls[0])
    await client.cut()  # the node keeps the session for recovery
    await asyncio.sleep(0.3)
    frozen = cluster.procs[1:]
    victim = cluster.procs[0]
    try:
        for proc in frozen:
            proc.popen.send_signal(signal.SIGSTOP)
        began = time.monotonic()
        victim.terminate()
        for _ in range(800):  # bounded: 40 s
            if not victim.alive():
                break
            await asyncio.sleep(0.05)
        took = time.monotonic() - began
    finally:
        for proc in frozen:
            with contextlib.suppress(Exception):
                proc.popen.send_signal(signal.SIGCONT)
    assert not victim.alive(), victim.log_tail()
    log = victim.log_tail()
    assert "no peer adopted the 1 sessions kept for recovery" in log, log
    # drain_timeout 3 s (+ 1 s at most), the server's own shutdown: well under 10 s
    assert took < 10.0, (took, log)
