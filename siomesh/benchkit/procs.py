"""Real processes for benchmarks and integration tests: start them, wait for them, end them by
pid.

Every process is started in its own session, so a process that forks workers (nginx, apache)
can be ended together with its children by the group id equal to its own pid. Every wait is
bounded in time and in count.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ports import LOOPBACK, free_ports

__all__ = [
    "TEST_SECRET",
    "MeshCluster",
    "Node",
    "Proc",
    "ProcessError",
    "RedisServer",
    "http_get",
    "start_mesh",
    "start_process",
    "stop_all",
    "wait_http",
]

#: The cluster secret every test cluster shares (tests sign and forge with it).
TEST_SECRET = "integration-test-secret-0123456789"
_POLL = 0.05
# Loopback only: never send a test request through an HTTP proxy named in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ProcessError(RuntimeError):
    """A process did not start, exited early, or did not become ready in time."""


@dataclass
class Proc:
    """A process we started; :meth:`stop` ends it (and its process group) by pid."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, limit: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace")

    def kill(self) -> None:
        """SIGKILL the process itself (a crash), then reap it."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def terminate(self) -> None:
        """Send SIGTERM (the start of :meth:`stop`) without waiting."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL the whole process group."""
        if self.alive():
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        # Workers a master left behind (it was killed, or exited before them) share its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    group: int | None = None,
) -> Proc:
    """Start ``argv`` in its own session, stdout and stderr going to ``log_path``; ``cwd``
    defaults to the current directory. ``group``: run it under that group id, with no
    supplementary groups (needs root; tests use it to tell nodes apart in firewall rules)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd is not None else None,
            start_new_session=True,
            group=group,
            extra_groups=[] if group is not None else None,
        )
    return Proc(name=name, popen=popen, log_path=log_path)


def http_get(url: str, *, timeout: float = 2.0) -> tuple[int, bytes]:
    """A plain GET; returns (status, body); raises OSError when nothing answered."""
    request = urllib.request.Request(url, method="GET")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def wait_http(
    url: str,
    *,
    timeout: float,
    procs: Sequence[Proc] = (),
    status: int = 200,
) -> None:
    """Wait until ``url`` answers ``status``; fail early if one of ``procs`` exits."""
    deadline = time.monotonic() + timeout
    attempts = int(timeout / _POLL) + 1
    last = "no answer"
    for _ in range(attempts):
        for proc in procs:
            if not proc.alive():
                raise ProcessError(
                    f"{proc.name} exited with {proc.popen.returncode} while waiting for {url}:\n"
                    f"{proc.log_tail()}"
                )
        try:
            code, body = http_get(url, timeout=1.0)
            if code == status:
                return
            last = f"status {code}: {body[:200]!r}"
        except OSError as exc:
            last = repr(exc)
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL)
    tails = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in procs)
    raise ProcessError(f"{url} not ready after {timeout}s ({last})\n{tails}")


@dataclass
class Node:
    """One uvicorn node."""

    index: int
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"


@dataclass
class MeshCluster:
    """Several nodes of one app; every node lists every node in ``SIOMESH_PEERS``."""

    nodes: list[Node]
    secret: str = TEST_SECRET
    env: dict[str, str] = field(default_factory=dict)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def node_by_url(self, url: str) -> Node:
        for node in self.nodes:
            if node.url == url:
                return node
        raise KeyError(url)

    def status(self, node: Node) -> dict[str, Any]:
        code, body = http_get(node.url + "/_siomesh/status", timeout=5.0)
        if code != 200:
            raise ProcessError(f"{node.url}/_siomesh/status answered {code}")
        result: dict[str, Any] = json.loads(body)
        return result

    def stats(self, key: str) -> dict[str, int]:
        """``stats[key]`` of every live node, by node URL."""
        return {n.url: int(self.status(n)["stats"][key]) for n in self.nodes if n.proc.alive()}

    def total(self, key: str) -> int:
        return sum(self.stats(key).values())

    def stop(self) -> None:
        stop_all([node.proc for node in self.nodes])

    def end(self) -> None:
        """End every node at once, without its drain (see :func:`end_all`)."""
        end_all([node.proc for node in self.nodes])


def stop_all(procs: Sequence[Proc], grace: float = 3.0) -> None:
    """Stop several processes: SIGTERM to all first, so their grace periods overlap."""
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.stop(grace=max(0.0, deadline - time.monotonic()))


def end_all(procs: Sequence[Proc]) -> None:
    """End several processes (and their process groups) by pid at once, without the graceful
    stop: for tear-downs where nothing is checked after. A node's graceful stop drains for
    ``drain_timeout`` (3 s) even with no client left, and a test suite pays that per cluster."""
    stop_all(procs, grace=0.0)


def node_argv(
    app: str,
    port: int,
    uvicorn_args: Sequence[str] = ("--timeout-graceful-shutdown", "1"),
) -> list[str]:
    """``uvicorn app`` on ``127.0.0.1:port``; by default a pending long-poll cannot hold a
    graceful shutdown for 45 s (pass ``()`` for uvicorn's own defaults)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        *uvicorn_args,
    ]


def start_mesh(
    count: int,
    workdir: Path,
    *,
    app: str = "siomesh.benchkit.apps.echo:app",
    env: Mapping[str, str] | None = None,
    pythonpath: Sequence[str] = (),
    secret: str = TEST_SECRET,
    ready_timeout: float = 30.0,
    health_path: str = "/_siomesh/health",
) -> MeshCluster:
    """Start ``count`` nodes of ``app`` on free loopback ports and wait until all are healthy.

    ``pythonpath`` directories are put first on the nodes' ``PYTHONPATH`` (for apps that are
    not installed, such as a source checkout's ``tests.apps``).

    On any failure every node already started is stopped before the error propagates.
    """
    ports = free_ports(count)
    urls = [f"http://{LOOPBACK}:{p}" for p in ports]
    base = dict(os.environ)
    base.update(
        {
            "SIOMESH_PEERS": ",".join(urls),
            "SIOMESH_SECRET": secret,
            "PYTHONUNBUFFERED": "1",
        }
    )
    inherited = [base["PYTHONPATH"]] if base.get("PYTHONPATH") else []
    if pythonpath:
        base["PYTHONPATH"] = os.pathsep.join([*pythonpath, *inherited])
    base.update(env or {})
    cluster = MeshCluster(nodes=[], secret=secret, env=dict(env or {}))
    try:
        for index, port in enumerate(ports):
            node_env = dict(base)
            node_env["SIOMESH_NODE_URL"] = urls[index]
            proc = start_process(
                f"node{index + 1}",
                node_argv(app, port),
                log_path=workdir / f"node{index + 1}-{port}.log",
                env=node_env,
            )
            cluster.nodes.append(Node(index=index, port=port, proc=proc))
        deadline = time.monotonic() + ready_timeout
        for node in cluster.nodes:
            wait_http(
                node.url + health_path,
                timeout=max(0.1, deadline - time.monotonic()),
                procs=[node.proc],
            )
    except BaseException:
        cluster.stop()
        raise
    return cluster


class RedisServer:
    """A private ``redis-server`` on a free loopback port: no persistence, ended by pid.

    Use as a context manager, or call :meth:`start` and then :meth:`stop` (in ``finally``).
    Its log goes to ``workdir`` (default: a temporary directory removed by :meth:`stop`).
    """

    def __init__(self, binary: str = "redis-server", workdir: Path | None = None) -> None:
        self.binary = binary
        self.port = free_ports(1)[0]
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        self.proc: Proc | None = None
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="siomesh-redis-"))

    def start(self, timeout: float = 10.0) -> RedisServer:
        argv = [
            self.binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
            "--appendonly", "no", "--protected-mode", "yes",
        ]  # fmt: skip
        self.proc = start_process(
            "redis-server", argv, log_path=self.workdir / f"redis-{self.port}.log"
        )
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / _POLL) + 1):
            if not self.proc.alive() or time.monotonic() >= deadline:
                break
            if self.ping():
                return self
            time.sleep(_POLL)
        tail = self.proc.log_tail()
        self.stop()
        raise ProcessError(f"redis-server on port {self.port} did not start:\n{tail}")

    def ping(self) -> bool:
        """Whether the server answers ``PING`` right now."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
