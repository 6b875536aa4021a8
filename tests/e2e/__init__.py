"""End-to-end tests: the ``siomesh`` command as a real process, real clients (python-socketio,
the npm ``socket.io-client`` under Node.js, headless Chromium).

Shared helpers live here (no pytest fixtures, so each test module stays self-describing):
every process a test starts is started in its own session and ended by its pid, SIGTERM first
and SIGKILL after a bound; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
#: Set when the mesh's cluster adapter exists: without it a broadcast stays on one worker.
HAS_ADAPTER = importlib.util.find_spec("siomesh.adapter") is not None
NEEDS_ADAPTER = "needs the mesh adapter"


def require(condition: bool, reason: str) -> None:
    """Skip when a tool is missing locally; fail when ``CI`` is set (CI must install it)."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/run must install it)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def siomesh_cmd(*args: str) -> list[str]:
    """The ``siomesh`` command, run by this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "siomesh.cli", *args]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """End ``proc`` by pid: SIGTERM, wait up to ``timeout``, then SIGKILL its process group
    (it was started with ``start_new_session``, so the group is only it and its children)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    # Children (workers, renderers) left behind by a killed parent share its process group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


@dataclass
class Cluster:
    """A running ``siomesh run``/``siomesh demo``: its public URL and its workers' URLs."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    workers: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


_WORKER_LINE = re.compile(r"^\s*worker (\d+): (http://\S+)$", re.MULTILINE)


@contextlib.contextmanager
def run_cluster(
    args: Sequence[str],
    tmp: Path,
    *,
    workers: int = 3,
    ready_timeout: float = 30.0,
    cwd: Path = REPO,
    env: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    """Start ``siomesh <args> --port <free>`` in ``cwd`` (with ``env`` added to this process's
    environment), wait until every worker's health endpoint says 200, yield, then stop it by
    pid."""
    port = free_port()
    log = tmp / f"siomesh-{port}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            siomesh_cmd(*args, "--port", str(port), "--host", LOOPBACK),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    cluster = Cluster(proc=proc, port=port, log=log)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"siomesh exited with {proc.returncode}:\n{cluster.output()}")
            found = dict(_WORKER_LINE.findall(cluster.output()))
            if len(found) == workers and all(_healthy(u) for u in found.values()):
                cluster.workers = [found[str(i)] for i in range(workers)]
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"siomesh not ready in {ready_timeout} s:\n{cluster.output()}")
            time.sleep(0.1)
        yield cluster
    finally:
        stop_process(proc)


def _healthy(url: str) -> bool:
    try:
        status, body = http_get(url + "/_siomesh/health", timeout=1.0)
    except OSError:
        return False
    return status == 200 and json.loads(body).get("status") == "serving"


def node_and_npm() -> tuple[str | None, str | None]:
    return shutil.which("node"), shutil.which("npm")


def chromium_path() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


NODE_DIR = Path(__file__).parent / "node"


def node_client() -> str:
    """The ``node`` binary, with npm ``socket.io-client`` 4.8.4 installed in tests/e2e/node
    (once); skips (fails under CI) without Node.js or the npm registry."""
    node, npm = node_and_npm()
    require(node is not None and npm is not None, "node and npm are not installed")
    assert node is not None and npm is not None
    if not (NODE_DIR / "node_modules" / "socket.io-client" / "package.json").exists():
        try:
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=180,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            require(False, "npm install timed out (is the npm registry reachable?)")
        else:
            require(done.returncode == 0, f"npm install failed:\n{done.stderr[-2000:]}")
    version = json.loads(
        (NODE_DIR / "node_modules" / "socket.io-client" / "package.json").read_text()
    )["version"]
    assert version == "4.8.4"
    return node
