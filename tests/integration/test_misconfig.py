"""Misconfigurations a user can make are said out loud in the node's log, with the fix, within
15 s: different secrets, a seed nothing listens on, a node_url that does not reach the process,
several processes claiming one node_url (``uvicorn --workers``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from siomesh.benchkit.procs import TEST_SECRET, Proc, stop_all
from tests.harness.nodes import start_node, wait_healthy
from tests.harness.ports import LOOPBACK, free_ports

BOUND = 15.0


def _node(
    tmp: Path,
    name: str,
    port: int,
    *,
    node_url: str,
    peers: list[str],
    secret: str = TEST_SECRET,
    extra: tuple[str, ...] = (),
) -> Proc:
    return start_node(
        tmp,
        name,
        port,
        node_url=node_url,
        peers=peers,
        secret=secret,
        uvicorn_args=("--timeout-graceful-shutdown", "1", *extra),
    )


def _wait_for_line(proc: Proc, text: str, bound: float = BOUND) -> float:
    """Seconds until ``text`` appears in the process's log; fails after ``bound``."""
    began = time.monotonic()
    while time.monotonic() - began < bound:
        if text in proc.log_tail(200_000):
            return time.monotonic() - began
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {proc.name}'s log after {bound}s:\n{proc.log_tail()}")


@contextlib.contextmanager
def _running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        stop_all(list(procs))  # SIGTERM to all at once: the drains overlap


def test_different_secrets_are_reported_on_both_sides(tmp_path: Path) -> None:
    pa, pb = free_ports(2)
    urls = [f"http://{LOOPBACK}:{pa}", f"http://{LOOPBACK}:{pb}"]
    a = _node(tmp_path, "a", pa, node_url=urls[0], peers=urls)
    b = _node(
        tmp_path,
        "b",
        pb,
        node_url=urls[1],
        peers=urls,
        secret="another-cluster-" + "k" * 3 + "9Qz7Lp2Rw5",
    )
    with _running(a, b):
        wait_healthy(urls[0], a)
        wait_healthy(urls[1], b)
        # the dialler is told its offer was refused, with the likely causes...
        _wait_for_line(a, f"peer {urls[1]} refused our link (HTTP 403)")
        assert "SIOMESH_SECRET" in a.log_tail(200_000)
        # ...and the acceptor says why it refused
        _wait_for_line(b, "refused a peer link from")
        _wait_for_line(b, "signature does not verify (different secret?)")


def test_a_seed_nothing_listens_on_is_named_with_the_error(tmp_path: Path) -> None:
    port, dead = free_ports(2)
    url = f"http://{LOOPBACK}:{port}"
    seed = f"http://{LOOPBACK}:{dead}"
    node = _node(tmp_path, "n", port, node_url=url, peers=[url, seed])
    with _running(node):
        wait_healthy(url, node)
        _wait_for_line(node, f"seed {seed} cannot be reached")
        status = httpx.get(url + "/_siomesh/status", timeout=2).json()
        [entry] = status["seeds"]
        assert entry["url"] == seed and not entry["linked"] and entry["error"]


def test_a_node_url_that_does_not_reach_the_process_is_reported(tmp_path: Path) -> None:
    port, elsewhere = free_ports(2)
    wrong = f"http://{LOOPBACK}:{elsewhere}"
    node = _node(tmp_path, "n", port, node_url=wrong, peers=[wrong])
    with _running(node):
        wait_healthy(f"http://{LOOPBACK}:{port}", node)
        _wait_for_line(node, f"node_url {wrong} does not reach this process")
        assert "SIOMESH_NODE_URL" in node.log_tail(200_000)


def test_several_processes_claiming_one_node_url_are_reported(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    url = f"http://{LOOPBACK}:{port}"
    node = _node(tmp_path, "n", port, node_url=url, peers=[url], extra=("--workers", "3"))
    with _running(node):
        wait_healthy(url, node)
        _wait_for_line(node, f"another process answers at node_url {url}")
        assert "siomesh run" in node.log_tail(200_000)
