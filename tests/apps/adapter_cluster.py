"""Real uvicorn nodes of ``tests.apps.adapter_app`` on loopback, for the adapter's integration
tests. Every process is started with its own pid recorded and ended by that pid;
every wait is bounded. ``RedisServer`` (a throwaway ``redis-server``) and ``free_ports`` come
from :mod:`siomesh.benchkit`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from siomesh.benchkit.ports import free_ports
from siomesh.benchkit.procs import RedisServer

__all__ = ["AdapterCluster", "RedisServer", "free_ports"]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "adapter-test-secret-0123456789"


def _end(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


@dataclass
class Node:
    url: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None


@dataclass
class AdapterCluster:
    """``size`` nodes, each knowing all the others as static peers."""

    size: int = 3
    app: str = "tests.apps.adapter_app:app"
    env: Mapping[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="adapter-")))

    def start(self, timeout: float = 30.0) -> AdapterCluster:
        ports = free_ports(self.size)
        self.nodes = [Node(url=f"http://127.0.0.1:{p}", port=p) for p in ports]
        peers = ",".join(n.url for n in self.nodes)
        try:
            for node in self.nodes:
                env = dict(os.environ)
                env.update(
                    SIOMESH_NODE_URL=node.url,
                    SIOMESH_PEERS=peers,
                    SIOMESH_SECRET=SECRET,
                    PYTHONPATH=str(ROOT),
                )
                env.update(self.env)
                node.log = self.workdir / f"node-{node.port}.log"
                with node.log.open("wb") as out:
                    node.proc = subprocess.Popen(
                        [
                            sys.executable, "-m", "uvicorn", self.app,
                            "--host", "127.0.0.1", "--port", str(node.port),
                            "--log-level", "warning", "--lifespan", "on",
                        ],
                        cwd=ROOT,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )  # fmt: skip
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                self._wait_healthy(node, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, node: Node, deadline: float) -> None:
        url = node.url + "/_siomesh/health"
        while time.monotonic() < deadline:
            assert node.proc is not None
            if node.proc.poll() is not None:
                raise RuntimeError(f"node {node.url} exited:\n{self.logs(node)}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"node {node.url} not healthy:\n{self.logs(node)}")

    def logs(self, node: Node) -> str:
        return node.log.read_text(errors="replace")[-4000:] if node.log else ""

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` by pid (no graceful leave)."""
        proc = self.nodes[index].proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                _end(node.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> AdapterCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
