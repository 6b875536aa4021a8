"""Two machines, simulated with Linux network namespaces: each its own address on a veth pair
(10.213.0.1 and 10.213.0.2, private to the namespaces this test creates), each running gunicorn
with 2 uvicorn workers (or one plain uvicorn process: containers with one worker each),
configured as docs/deployment.md ("Across machines") says: ``SIOMESH_SECRET``,
``SIOMESH_ADVERTISE_HOST`` (the machine's address), ``SIOMESH_PEER_PORTS`` and ``SIOMESH_PEERS``
(the other machine's first two peer ports). The four workers (or two) must form one cluster,
and clients behind a round-robin balancer that sends every request to the next machine
(run inside the first namespace: tests/apps/netns_clients.py) must see calls forwarded across the
machines and room broadcasts, once and in order, on both.

It needs root and CAP_NET_ADMIN (CI runs as root), like tests/integration/test_partition.py:
without ``ip`` it skips, or fails under ``CI``; not root, or namespaces refused: it skips. The
namespaces and the veth pair are deleted by name at the end whatever happens, after every
process the test started was ended by its pid. Nothing touches the host's own interfaces.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.e2e import require
from tests.harness.procs import REPO_ROOT, TEST_SECRET, Proc, start_process, stop_all
from tests.harness.servers import Server

#: The two machines' addresses, inside the namespaces only.
ADDRESSES = ("10.213.0.1", "10.213.0.2")
#: Fixed ports are fine here: the namespaces are new and empty (nothing else can hold them).
PUBLIC_PORT = 8000
PEER_PORTS = (9000, 9003)
HAS_GUNICORN = importlib.util.find_spec("gunicorn") is not None
CLIENTS = 16
SHOUTS = 10


def _ip(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=15, check=False)


@contextlib.contextmanager
def two_machines(binary: str) -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair, each with its address and loopback up;
    yields their names. Skips when they cannot be created; deletes them (and the pair) by
    name on the way out."""
    tag = str(os.getpid())
    names = (f"siomesh-{tag}-a", f"siomesh-{tag}-b")
    veths = (f"smw{tag}a", f"smw{tag}b")  # interface names: at most 15 characters
    try:
        made = _ip(binary, "netns", "add", names[0])
        if made.returncode != 0:
            pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
        steps = [
            ["netns", "add", names[1]],
            ["link", "add", veths[0], "type", "veth", "peer", "name", veths[1]],
            ["link", "set", veths[0], "netns", names[0]],
            ["link", "set", veths[1], "netns", names[1]],
        ]
        for ns, veth, address in zip(names, veths, ADDRESSES, strict=True):
            steps += [
                ["-n", ns, "addr", "add", f"{address}/24", "dev", veth],
                ["-n", ns, "link", "set", veth, "up"],
                ["-n", ns, "link", "set", "lo", "up"],
            ]
        for step in steps:
            done = _ip(binary, *step)
            if done.returncode != 0:
                pytest.skip(f"ip {' '.join(step)}: {done.stderr.strip()}")
        yield names
    finally:
        # a veth still on the host (a failed move) goes by name; deleting a namespace
        # deletes the veth inside it, and its peer with it
        for veth in veths:
            if _ip(binary, "link", "show", veth).returncode == 0:
                _ip(binary, "link", "del", veth)
        for ns in names:
            if _ip(binary, "netns", "pids", ns).returncode == 0:
                _ip(binary, "netns", "del", ns)


#: How each machine serves the app: gunicorn with 2 uvicorn workers, or one uvicorn process
#: (a container with one worker, meshed with the other machine's by the same settings).
SERVERS: dict[str, tuple[list[str], int]] = {
    "gunicorn": (
        ["-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2", "-b",
         "{host}:{port}", "--graceful-timeout", "10", "--log-level", "info"],
        2,
    ),
    "uvicorn": (["-m", "uvicorn", "--host", "{host}", "--port", "{port}"], 1),
}  # fmt: skip


def _start_machine(binary: str, ns: str, index: int, kind: str, tmp: Path) -> tuple[Proc, Server]:
    """``kind`` (a key of :data:`SERVERS`) in namespace ``ns``, machine ``index`` (0 or 1)."""
    me, other = ADDRESSES[index], ADDRESSES[1 - index]
    runtime = tmp / f"runtime-{index}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIOMESH_")}
    env.update(
        {
            "SIOMESH_SECRET": TEST_SECRET,
            "SIOMESH_ADVERTISE_HOST": me,
            "SIOMESH_PEER_PORTS": f"{PEER_PORTS[0]}-{PEER_PORTS[1]}",
            "SIOMESH_PEERS": f"http://{other}:{PEER_PORTS[0]},http://{other}:{PEER_PORTS[0] + 1}",
            # each machine its own rendezvous (they share this file system, not a machine)
            "SIOMESH_RUNTIME_DIR": str(runtime),
            "SIOMESH_SERVED_BY_HEADER": "1",  # so that the clients see who forwarded
            "SIOMESH_DRAIN_TIMEOUT": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
    )
    argv = [
        binary, "netns", "exec", ns,  # execs the command: the pid is the server's own
        sys.executable, *(a.format(host=me, port=PUBLIC_PORT) for a in SERVERS[kind][0]),
        "tests.apps.workers_app:app",
    ]  # fmt: skip
    proc = start_process(
        f"{kind}-{ns}", argv, log_path=tmp / f"{kind}-{ns}.log", env=env, cwd=REPO_ROOT
    )
    return proc, Server(kind=kind, proc=proc, port=PUBLIC_PORT, runtime=runtime)


def _wait_workers(servers: list[Server], count: int, timeout: float) -> None:
    """Until each machine's rendezvous lists ``count`` serving workers (read from the host:
    the files are on the shared file system; the workers' URLs are not reachable from here)."""
    deadline = time.monotonic() + timeout
    while not all(len(s.workers()) == count for s in servers):
        for server in servers:
            if not server.proc.alive():
                raise AssertionError(f"gunicorn exited:\n{server.proc.log_tail(6000)}")
        if time.monotonic() > deadline:
            raise AssertionError(
                "workers not there:\n"
                + "\n".join(f"{s.workers(None)}\n{s.proc.log_tail(4000)}" for s in servers)
            )
        time.sleep(0.2)


@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
def test_two_machines_form_one_cluster(kind: str, tmp_path: Path) -> None:
    """gunicorn -w 2 on each machine: one cluster of 4; one uvicorn process on each (containers
    with one worker each): one cluster of 2. Either way sessions live on both machines, requests
    are forwarded across, and every client gets every room broadcast once and in order."""
    binary = require_binary("ip")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if kind == "gunicorn":
        require(HAS_GUNICORN, "gunicorn is not installed: pip install -e '.[test]'")
    per_machine = SERVERS[kind][1]
    started = time.monotonic()
    procs: list[Proc] = []
    with two_machines(binary) as names:
        try:
            servers = []
            for index, ns in enumerate(names):
                proc, server = _start_machine(binary, ns, index, kind, tmp_path)
                procs.append(proc)
                servers.append(server)
            _wait_workers(servers, per_machine, 40)
            by_machine = [[w.url for w in s.workers()] for s in servers]
            workers = [u for urls in by_machine for u in urls]
            assert len(workers) == 2 * per_machine, by_machine
            for urls, address in zip(by_machine, ADDRESSES, strict=True):
                for url in urls:
                    host, port = url.removeprefix("http://").rsplit(":", 1)
                    assert host == address and PEER_PORTS[0] <= int(port) <= PEER_PORTS[1], url
            config = {
                "workers": workers,
                "public": [f"http://{a}:{PUBLIC_PORT}" for a in ADDRESSES],
                "clients": CLIENTS,
                "shouts": SHOUTS,
            }
            done = subprocess.run(
                [binary, "netns", "exec", names[0], sys.executable, "-m",
                 "tests.apps.netns_clients", json.dumps(config)],
                capture_output=True, text=True, timeout=150, check=False, cwd=REPO_ROOT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )  # fmt: skip
            assert done.returncode == 0, done.stderr[-4000:]
            result = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            stop_all(procs, grace=20.0)
    elapsed = time.monotonic() - started
    members = result["members"]
    assert all(set(seen) == set(workers) for seen in members.values()), members
    assert result["errors"] == [], result["errors"]
    machine = {u: i for i, urls in enumerate(by_machine) for u in urls}
    owners = result["owners"]
    # the sessions live on both machines, and requests reached the machine that does not
    # own them, which forwarded them across
    assert {machine[o] for o in owners} == {0, 1}, owners
    across = [(via, owner) for via, owner in result["forwards"] if machine[via] != machine[owner]]
    assert {machine[via] for via, _ in across} == {0, 1}, result["forwards"]
    # the broadcasts crossed too: the sender's session is on one machine, listeners on both
    assert all(news == list(range(SHOUTS)) for news in result["news"]), result["news"]
    transports = result["transports"]
    assert transports[0::2] == ["polling"] * len(transports[0::2]), transports
    assert transports[1::2] == ["websocket"] * len(transports[1::2]), transports
    print(
        f"\ntwo machines (network namespaces), {kind} with {per_machine} worker(s) each: one "
        f"cluster of "
        f"{len(workers)}; {CLIENTS} clients, sessions on {sorted(owners.count(u) for u in workers)}"
        f" per worker; {len(across)} responses forwarded across machines "
        f"({len(result['forwards'])} forwarded in all); {SHOUTS} broadcasts to all, once and in "
        f"order; transports {sorted(set(transports))}; {elapsed:.1f} s"
    )
