"""A network partition between two nodes that stay members (each still reaches the third): every
room broadcast sent across it is either delivered, once and in order, when it heals, or the
clients who missed it are disconnected so that they resync. Never a silent gap.

The partition is real: the two nodes run under their own group ids and iptables drops every
packet either sends to the other's port on loopback (``-m owner --gid-owner``), so their links
stall the way a cut cable or a dead switch makes them stall (no reset, no error: silence), while
clients and the third node reach both. It needs root and CAP_NET_ADMIN (CI runs as root); the
rules are removed at the end whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import socketio

from siomesh.benchkit.procs import Proc, end_all, stop_all
from tests.conftest import require_binary
from tests.harness.balancers import start_balancer
from tests.harness.callers import steady_caller
from tests.harness.nodes import start_node, wait_healthy
from tests.harness.ports import LOOPBACK, free_ports

#: group ids of the two partitioned nodes (any unused ids do)
GROUPS = (47101, 47102)
#: broadcasts sent from node A while it is cut from node B, one every INTERVAL
BROADCASTS = 40
INTERVAL = 0.2  # 8 s of partition: longer than the stall warning's 5 s (adapter/channel.py)


def _iptables(binary: str, action: str, rule: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, "-w", "5", action, "OUTPUT", *rule],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


def _rule(group: int, port: int) -> list[str]:
    return ["-o", "lo", "-p", "tcp", "--dport", str(port), "-m", "owner",
            "--gid-owner", str(group), "-j", "DROP"]  # fmt: skip


@contextlib.contextmanager
def partition(binary: str, a: tuple[int, int], b: tuple[int, int]) -> Iterator[None]:
    """Drop every packet node ``a`` (group, port) sends to ``b``'s port, and the reverse."""
    rules = [_rule(a[0], b[1]), _rule(b[0], a[1])]
    added: list[list[str]] = []
    try:
        for rule in rules:
            done = _iptables(binary, "-A", rule)
            assert done.returncode == 0, done.stderr
            added.append(rule)
        yield
    finally:
        for rule in added:
            _iptables(binary, "-D", rule)


def _require_firewall() -> str:
    binary = require_binary("iptables")
    if os.geteuid() != 0:
        pytest.skip("a partition needs root (iptables rules)")
    probe = _rule(GROUPS[0], 9)
    added = _iptables(binary, "-A", probe)
    if added.returncode != 0:
        pytest.skip(f"iptables refused a rule (no CAP_NET_ADMIN here?): {added.stderr.strip()}")
    _iptables(binary, "-D", probe)
    return binary


@pytest.fixture
def firewall() -> str:
    return _require_firewall()


def _start(tmp: Path, env: dict[str, str]) -> tuple[list[str], list[int], list[Proc]]:
    ports = free_ports(3)
    urls = [f"http://{LOOPBACK}:{p}" for p in ports]
    procs: list[Proc] = []
    try:
        for i, port in enumerate(ports):
            group = GROUPS[i] if i < 2 else None
            node_env = dict(env) if i == 0 else {}
            procs.append(
                start_node(
                    tmp, f"n{i}", port, node_url=urls[i], peers=urls, env=node_env, group=group
                )
            )
        for url, proc in zip(urls, procs, strict=True):
            wait_healthy(url, proc)
    except BaseException:
        stop_all(list(procs))  # SIGTERM to all at once: the drains overlap
        raise
    return urls, ports, procs


@pytest.mark.parametrize("max_queue", [10_000, 20], ids=["held", "overflow"])
async def test_a_partition_loses_nothing_in_silence(
    firewall: str, tmp_path: Path, max_queue: int
) -> None:
    """Node A (0) and node B (1) cannot reach each other for 8 s; C (2) reaches both. A's
    adapter holds what it sends B (``adapter.max_queue``): with room for it, B's clients get
    every broadcast once and in order when the partition heals; without, A drops it, says so,
    and B disconnects the clients that may have missed it (a WARNING on both sides)."""
    env = {"SIOMESH_ADAPTER_MAX_QUEUE": str(max_queue)}
    urls, ports, procs = _start(tmp_path, env)
    got: dict[int, list[int]] = {}
    disconnects: dict[int, list[str]] = {}
    clients: list[tuple[int, int, socketio.AsyncClient]] = []
    try:
        for i in range(9):  # 3 per node, straight to the node, polling and WebSocket mixed
            node = i % 3
            client = socketio.AsyncClient(reconnection=False)
            got[i], disconnects[i] = [], []
            client.on("b", lambda data, i=i: got[i].append(int(data[1])))
            client.on("disconnect", lambda reason=None, i=i: disconnects[i].append(str(reason)))
            transports = ["polling"] if i % 2 == 0 else ["websocket"]
            await asyncio.wait_for(client.connect(urls[node], transports=transports), 15)
            assert await client.call("join", "room", timeout=10)
            clients.append((i, node, client))
        sender = next(c for i, n, c in clients if n == 0)
        await asyncio.sleep(0.5)
        with partition(firewall, (GROUPS[0], ports[0]), (GROUPS[1], ports[1])):
            began = time.monotonic()
            count = await sender.call(
                "broadcast",
                {"room": "room", "tag": "p", "count": BROADCASTS, "interval": INTERVAL},
                timeout=BROADCASTS * INTERVAL + 30,
            )
            assert count == BROADCASTS
            # meanwhile the clients of A and C got everything, and their calls are answered
            for i, node, c in clients:
                if node == 1:
                    continue
                assert await c.call("echo", {"i": i}, timeout=5) == {"i": i}
                assert got[i] == list(range(BROADCASTS)), (i, got[i])
            # the partition lasted: B's clients cannot have it all yet
            assert time.monotonic() - began >= (BROADCASTS - 1) * INTERVAL
        healed = time.monotonic()
        owned = [i for i, n, _ in clients if n == 1]
        for i in owned:
            while time.monotonic() - healed < 30:
                if len(got[i]) >= BROADCASTS or disconnects[i]:
                    break
                await asyncio.sleep(0.1)
        outcome: dict[int, str] = {}
        for i in owned:
            # never a duplicate, never out of order
            assert got[i] == sorted(set(got[i])), (i, got[i])
            if disconnects[i]:
                outcome[i] = "disconnected"
            else:
                assert got[i] == list(range(BROADCASTS)), (i, got[i], disconnects[i])
                outcome[i] = "complete"
        others = {i: d for i, d in disconnects.items() if i not in owned and d}
        assert not others, others
        logs = [p.log_path.read_text(errors="replace") for p in procs]
        # A said that B stopped acknowledging, and that what it held was delivered
        assert "not acknowledged for" in logs[0], logs[0][-3000:]
        if max_queue >= BROADCASTS:
            assert set(outcome.values()) == {"complete"}, outcome
            assert "acknowledges again" in logs[0], logs[0][-3000:]
        else:
            # A could not hold it all: it dropped the rest and said so, and B's clients were
            # told (disconnected to resync), and B said so
            assert set(outcome.values()) == {"disconnected"}, (outcome, got)
            assert "is full" in logs[0] and "dropped" in logs[0], logs[0][-3000:]
            assert "were lost" in logs[1], logs[1][-3000:]
    finally:
        await asyncio.gather(
            *(asyncio.wait_for(client.disconnect(), 3) for _, _, client in clients),
            return_exceptions=True,
        )
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.popen.send_signal(signal.SIGCONT)
        end_all(list(procs))


#: clients calling through round-robin across a healed partition (the issue's setup)
HEAL_CLIENTS = 30
HEAL_CUT = 20.0
CALL_EVERY = 0.2


async def test_polling_clients_are_back_at_once_after_a_heal(firewall: str, tmp_path: Path) -> None:
    """30 polling-only clients through nginx round-robin, calling every 0.2 s, while two of
    the 3 nodes are cut from each other for 20 s. A request that lands on one of the two for a
    session the other owns goes through the third node (no 400 for a live owner), at once once
    gossip says the owner is reached only indirectly (no wait on a silent link), and dials
    ignore their backoff for a live owner: no client is down more than 5 s after the heal.
    Lost calls are printed (during the cut, after it)."""
    require_binary("nginx")
    urls, ports, procs = _start(tmp_path, {})
    lb = start_balancer("nginx", [u.removeprefix("http://") for u in urls], tmp_path / "nginx")
    stop = asyncio.Event()
    logs: list[list[tuple[float, bool]]] = [[] for _ in range(HEAL_CLIENTS)]
    tasks: list[asyncio.Task[None]] = []
    try:
        tasks = [
            asyncio.ensure_future(steady_caller(lb.url, i, stop, logs[i], every=CALL_EVERY))
            for i in range(HEAL_CLIENTS)
        ]
        await asyncio.sleep(3)
        with partition(firewall, (GROUPS[0], ports[0]), (GROUPS[1], ports[1])):
            cut = time.monotonic()
            await asyncio.sleep(HEAL_CUT)
        healed = time.monotonic()
        await asyncio.sleep(10)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        lost_before = sum(1 for log in logs for t, ok in log if not ok and t < cut)
        lost_during = sum(1 for log in logs for t, ok in log if not ok and cut <= t < healed)
        lost_after = sum(1 for log in logs for t, ok in log if not ok and t >= healed)
        down_after = {
            i: round(max(t for t, ok in log if not ok) - healed, 2)
            for i, log in enumerate(logs)
            if any(not ok and t >= healed for t, ok in log)
        }
        print(
            f"calls lost: {lost_before} before the cut, {lost_during} during it, "
            f"{lost_after} after the heal; clients down after the heal (s): {down_after}; "
            f"forwarded via a third node: {[_stat(u, 'forwarded_via') for u in urls]}, "
            f"of which sent there at once: {[_stat(u, 'forwarded_via_first') for u in urls]}"
        )
        assert lost_before == 0
        # each of the two learnt from gossip that it reaches the other only through the third,
        # sent through it at once, and learnt of the heal
        logs_text = [p.log_path.read_text(errors="replace") for p in procs]
        for i in (0, 1):
            assert f"cannot reach {urls[1 - i]} directly" in logs_text[i], logs_text[i][-3000:]
            assert f"reaching {urls[1 - i]} directly again" in logs_text[i], logs_text[i][-3000:]
        assert _stat(urls[0], "forwarded_via_first") + _stat(urls[1], "forwarded_via_first") > 0
        assert all(d <= 5.0 for d in down_after.values()), down_after
        # every client is calling successfully at the end
        assert all(log and log[-1][1] for log in logs), [log[-3:] for log in logs]
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        lb.stop()
        end_all(list(procs))


def _stat(url: str, key: str) -> int:
    status = httpx.get(url + "/_siomesh/status", timeout=5).json()
    return int(status["stats"].get(key, 0))
