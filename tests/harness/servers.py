"""Servers as users run them: ``uvicorn APP --workers N`` and gunicorn with uvicorn workers,
serving ``SioMesh(app)`` configured by ``SIOMESH_SECRET`` alone (siomesh.local_peers).

:func:`start_server` starts one in its own session (stopped by pid and process group), with its
own rendezvous directory (``SIOMESH_RUNTIME_DIR`` under the test's tmp directory), so tests
never see each other's workers. The workers are read from that directory: each writes a file
with its private URL, pid and state.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siomesh.benchkit.procs import TEST_SECRET, Proc, ProcessError, http_get, start_process

from .ports import LOOPBACK, free_port
from .procs import REPO_ROOT

__all__ = ["KINDS", "Server", "WorkerFile", "running_server", "start_server"]

APP = "tests.apps.workers_app:app"

#: How each kind of server is started (``{app}``, ``{workers}``, ``{port}`` filled in).
KINDS: dict[str, list[str]] = {
    "uvicorn": [
        "-m", "uvicorn", "{app}", "--workers", "{workers}", "--host", LOOPBACK, "--port",
        "{port}", "--log-level", "info", "--timeout-graceful-shutdown", "5",
    ],
    "gunicorn": [
        "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "{workers}", "-b",
        f"{LOOPBACK}:{{port}}", "--graceful-timeout", "20", "--log-level", "info", "{app}",
    ],
    "uvicorn-worker": [
        "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", "{workers}", "-b",
        f"{LOOPBACK}:{{port}}", "--graceful-timeout", "20", "--log-level", "info", "{app}",
    ],
}  # fmt: skip


@dataclass(frozen=True)
class WorkerFile:
    url: str
    pid: int
    state: str


@dataclass
class Server:
    kind: str
    proc: Proc
    port: int
    runtime: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def directory(self) -> Path:
        return self.runtime / str(self.port)

    def workers(self, state: str | None = "serving") -> list[WorkerFile]:
        """The workers' rendezvous files (``state`` None: all)."""
        found = []
        with contextlib.suppress(OSError):
            for path in sorted(self.directory.glob("*.json")):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    data = json.loads(path.read_bytes())
                    entry = WorkerFile(str(data["url"]), int(data["pid"]), str(data["state"]))
                    if state is None or entry.state == state:
                        found.append(entry)
        return found

    def status(self, worker: WorkerFile) -> dict[str, Any]:
        code, body = http_get(worker.url + "/_siomesh/status", timeout=3.0)
        if code != 200:
            raise ProcessError(f"{worker.url}/_siomesh/status answered {code}")
        result: dict[str, Any] = json.loads(body)
        return result

    def alive_members(self, worker: WorkerFile) -> set[str]:
        return {m["url"] for m in self.status(worker)["members"] if m["state"] == "alive"}

    def meshed(self, count: int, exclude: Sequence[int] = ()) -> list[WorkerFile] | None:
        """The serving workers when there are ``count`` of them (pids in ``exclude`` aside),
        each healthy and seeing all the others alive; else None."""
        workers = [w for w in self.workers() if w.pid not in exclude]
        if len(workers) != count:
            return None
        urls = {w.url for w in workers}
        try:
            for worker in workers:
                if not urls <= self.alive_members(worker):
                    return None
                if http_get(worker.url + "/_siomesh/health", timeout=2.0)[0] != 200:
                    return None
        except (OSError, ProcessError, ValueError):
            return None
        return workers

    def wait_meshed(
        self, count: int, *, timeout: float = 40.0, exclude: Sequence[int] = ()
    ) -> list[WorkerFile]:
        deadline = time.monotonic() + timeout
        while True:
            if not self.proc.alive():
                raise ProcessError(f"{self.kind} exited:\n{self.proc.log_tail(8000)}")
            workers = self.meshed(count, exclude)
            if workers is not None:
                return workers
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"{self.kind}: {count} meshed workers not there after {timeout} s "
                    f"(files: {self.workers(None)}):\n{self.proc.log_tail(8000)}"
                )
            time.sleep(0.2)

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def log(self) -> str:
        return self.proc.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.stop(grace=25.0)


def start_server(
    kind: str,
    tmp: Path,
    *,
    workers: int = 3,
    env: Mapping[str, str] | None = None,
    extra: Sequence[str] = (),
    app: str = APP,
) -> Server:
    """Start ``kind`` (a key of :data:`KINDS`) on a free loopback port, serving ``app`` from
    the checkout; its output goes to ``tmp/<kind>-<port>.log``."""
    port = free_port()
    runtime = tmp / f"runtime-{port}"
    variables = dict(os.environ)
    for name in [k for k in variables if k.startswith("SIOMESH_")]:
        del variables[name]
    variables.update(
        {
            "SIOMESH_SECRET": TEST_SECRET,
            "SIOMESH_RUNTIME_DIR": str(runtime),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
    )
    variables.update(env or {})
    argv = [
        sys.executable,
        *(a.format(app=app, workers=workers, port=port) for a in KINDS[kind]),
        *extra,
    ]
    proc = start_process(
        f"{kind}-{port}", argv, log_path=tmp / f"{kind}-{port}.log", env=variables, cwd=REPO_ROOT
    )
    return Server(kind=kind, proc=proc, port=port, runtime=runtime)


@contextlib.contextmanager
def running_server(
    kind: str, tmp: Path, *, workers: int = 3, timeout: float = 40.0, **options: Any
) -> Iterator[Server]:
    """:func:`start_server`, wait until its ``workers`` are meshed, yield, stop it. A port
    taken between its choice and the server's bind (by another test's connection) is
    replaced, once."""
    for attempt in (1, 2):
        server = start_server(kind, tmp, workers=workers, **options)
        try:
            server.wait_meshed(workers, timeout=timeout)
        except ProcessError:
            server.stop()
            if attempt == 1 and "Address already in use" in server.log():
                continue
            raise
        break
    try:
        yield server
    finally:
        server.stop()
