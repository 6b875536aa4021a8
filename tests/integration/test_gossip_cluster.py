"""Gossip with real processes: join through one seed, crash, restart, join under load."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary
from tests.harness.balancers import start_balancer
from tests.harness.load import run_load
from tests.harness.ports import LOOPBACK, free_ports
from tests.harness.procs import (
    REPO_ROOT,
    TEST_SECRET,
    Proc,
    end_all,
    node_argv,
    start_process,
)

DETECTION_BOUND = 8.0  # seconds: GossipConfig.lan() detects in ~2.5 s at N=5; CI is slow


class Cluster:
    """Nodes started by hand so that each can have its own seed list."""

    def __init__(self, workdir: Path, count: int) -> None:
        self.workdir = workdir
        self.ports = free_ports(count)
        self.procs: dict[int, Proc] = {}

    def url(self, i: int) -> str:
        return f"http://{LOOPBACK}:{self.ports[i]}"

    def start(self, i: int, seeds: list[int]) -> None:
        env = dict(os.environ)
        env.update(
            {
                "SIOMESH_NODE_URL": self.url(i),
                "SIOMESH_PEERS": ",".join(self.url(s) for s in seeds),
                "SIOMESH_SECRET": TEST_SECRET,
                "PYTHONPATH": str(REPO_ROOT),
                "ECHO_PING_INTERVAL": "5",
                "ECHO_PING_TIMEOUT": "5",
            }
        )
        self.procs[i] = start_process(
            f"node{i}-{len(self.procs)}",
            node_argv("tests.apps.echo:app", self.ports[i]),
            log_path=self.workdir / f"node{i}.log",
            env=env,
        )
        wait_for(lambda: get(self.url(i) + "/_siomesh/health")[0] == 200, 30, f"node {i} up")

    def status(self, i: int) -> dict[str, Any]:
        code, body = get(self.url(i) + "/_siomesh/status")
        assert code == 200
        data: dict[str, Any] = json.loads(body)
        return data

    def states(self, i: int) -> dict[str, tuple[str, int]]:
        return {m["url"]: (m["state"], m["generation"]) for m in self.status(i)["members"]}

    def alive(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.alive()]

    def stop(self) -> None:
        end_all(list(self.procs.values()))  # a tear-down: nothing is checked after


def get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except OSError:
        return 0, b""


def post(url: str, body: bytes, timeout: float = 3.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "text/plain;charset=UTF-8")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` every 50 ms for at most ``timeout`` s; return the time it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for: {what}")


def handshake(url: str) -> str:
    code, body = get(url + "/socket.io/?EIO=4&transport=polling")
    assert code == 200, body
    sid: str = json.loads(body[1:])["sid"]
    return sid


def engine_url(base: str, sid: str) -> str:
    return f"{base}/socket.io/?EIO=4&transport=polling&sid={sid}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, 5)
    try:
        yield c
    finally:
        c.stop()


def test_join_crash_restart(cluster: Cluster) -> None:
    # Every node knows only node 0: gossip must do the rest.
    cluster.start(0, [])
    for i in range(1, 5):
        cluster.start(i, [0])
    urls = {cluster.url(i) for i in range(5)}
    took = wait_for(
        lambda: all(
            {u for u, (s, _) in cluster.states(i).items() if s == "alive"} == urls for i in range(5)
        ),
        15,
        "5 nodes agree on 5 alive members",
    )
    print(f"cluster of 5 formed in {took:.2f}s")

    # A session on node 3, reached through node 1 (forwarded by its tag, owner alive).
    victim = 3
    sid = handshake(cluster.url(victim))
    code, body = post(engine_url(cluster.url(1), sid), b"40")
    assert (code, body) == (200, b"OK")
    code, body = get(engine_url(cluster.url(2), sid))
    assert code == 200 and body.startswith(b"40"), body
    # The directory learned the sid: every node sees node 3 owning one session.
    wait_for(
        lambda: all(
            m["sessions"] >= 1
            for i in (0, 1, 2, 4)
            for m in cluster.status(i)["members"]
            if m["url"] == cluster.url(victim)
        ),
        5,
        "directory knows the sid everywhere",
    )

    # Introspection: the directory's size per origin, as JSON.
    assert cluster.status(0)["directory"][cluster.url(victim)] >= 1

    cluster.procs[victim].kill()
    detected = wait_for(
        lambda: all(cluster.states(i)[cluster.url(victim)][0] == "dead" for i in (0, 1, 2, 4)),
        DETECTION_BOUND,
        "every survivor declares the crashed node dead",
    )
    print(f"crash detected by all survivors in {detected:.2f}s")
    for i in (0, 1, 2, 4):
        before = cluster.status(i)["stats"]
        t0 = time.monotonic()
        code, body = get(engine_url(cluster.url(i), sid))
        elapsed = time.monotonic() - t0
        after = cluster.status(i)["stats"]
        assert code == 400 and b"Invalid session" in body
        assert elapsed < 0.5, f"node {i} took {elapsed:.3f}s to refuse a dead owner's sid"
        # Refused from the membership view, with no forwarding attempt.
        assert after["rejected"] == before["rejected"] + 1
        assert after["forward_errors"] == before["forward_errors"]

    # Restart under the same URL: a new generation; the old sid is refused at once, new
    # sessions of the restarted node are forwarded to it.
    old_generation = cluster.states(0)[cluster.url(victim)][1]
    cluster.start(victim, [0])
    wait_for(
        lambda: all(
            cluster.states(i)[cluster.url(victim)][0] == "alive"
            and cluster.states(i)[cluster.url(victim)][1] > old_generation
            for i in (0, 1, 2, 4)
        ),
        DETECTION_BOUND,
        "every node sees the restarted node alive with a new generation",
    )
    before = cluster.status(1)["stats"]
    code, _ = get(engine_url(cluster.url(1), sid))
    assert code == 400
    assert cluster.status(1)["stats"]["forward_errors"] == before["forward_errors"]
    fresh = handshake(cluster.url(victim))
    assert post(engine_url(cluster.url(4), fresh), b"40") == (200, b"OK")
    code, body = get(engine_url(cluster.url(0), fresh))
    assert code == 200 and body.startswith(b"40")


def test_node_joining_under_load(tmp_path: Path) -> None:
    require_binary("nginx")
    c = Cluster(tmp_path, 4)
    balancer = None
    try:
        c.start(0, [])
        c.start(1, [0])
        c.start(2, [0])
        # The balancer (the shipped 3-backend config) already lists node 3, which is not
        # started yet: nginx skips it until it answers.
        balancer = start_balancer(
            "nginx", [f"{LOOPBACK}:{c.ports[i]}" for i in (0, 1, 3)], tmp_path / "nginx"
        )

        async def scenario() -> tuple[Any, Any]:
            during = asyncio.ensure_future(
                run_load(balancer.url, clients=20, round_trips=15, deadline=90)
            )
            await asyncio.sleep(1.0)
            await asyncio.to_thread(c.start, 3, [1])
            await asyncio.to_thread(
                wait_for,
                lambda: all(c.states(i).get(c.url(3), ("", 0))[0] == "alive" for i in (0, 1, 2)),
                DETECTION_BOUND,
                "the new node is known to all",
            )
            first = await during
            # nginx retries a backend that refused after its fail_timeout (1 s in the config)
            await asyncio.sleep(1.5)
            after = await run_load(balancer.url, clients=30, round_trips=5, deadline=90)
            return first, after

        first, after = asyncio.run(scenario())
        assert first.ok, first.summary()
        assert after.ok, after.summary()
        assert c.url(3) in after.nodes_seen, after.summary()
        forwarded = sum(c.status(i)["stats"]["forwarded"] for i in range(4))
        assert forwarded > 0
    finally:
        if balancer is not None:
            balancer.stop()
        c.stop()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))
