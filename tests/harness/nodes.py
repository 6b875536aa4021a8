"""One siomesh node as a real uvicorn process, configured only by ``SIOMESH_*`` variables, for
tests that need what :func:`tests.harness.procs.start_mesh` does not offer (TLS, uvicorn's
default shutdown, several workers on one node_url, a node_url that points elsewhere)."""

from __future__ import annotations

import contextlib
import os
import ssl
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from siomesh.benchkit.procs import TEST_SECRET, Proc, ProcessError, node_argv, start_process

__all__ = ["ECHO_APP", "start_node", "wait_healthy"]

ECHO_APP = "siomesh.benchkit.apps.echo:app"


def start_node(
    tmp: Path,
    name: str,
    port: int,
    *,
    node_url: str,
    peers: Sequence[str],
    secret: str = TEST_SECRET,
    env: Mapping[str, str] | None = None,
    uvicorn_args: Sequence[str] = ("--timeout-graceful-shutdown", "1"),
    app: str = ECHO_APP,
    group: int | None = None,
) -> Proc:
    """Start ``uvicorn app`` on ``127.0.0.1:port`` with the node's ``SIOMESH_*`` settings;
    its output goes to ``tmp/<name>.log``. Stop it with ``Proc.stop()``."""
    variables = dict(os.environ)
    variables.update(
        {
            "SIOMESH_NODE_URL": node_url,
            "SIOMESH_PEERS": ",".join(peers),
            "SIOMESH_SECRET": secret,
            "PYTHONUNBUFFERED": "1",
        }
    )
    variables.update(env or {})
    argv = node_argv(app, port, uvicorn_args)
    return start_process(name, argv, log_path=tmp / f"{name}.log", env=variables, group=group)


def wait_healthy(
    url: str, proc: Proc, *, verify: ssl.SSLContext | bool = True, timeout: float = 30.0
) -> None:
    """Wait until ``url``'s health endpoint answers 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 1):
        if not proc.alive():
            raise ProcessError(f"{proc.name} exited:\n{proc.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/_siomesh/health", verify=verify, timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise ProcessError(f"{url} not healthy after {timeout}s:\n{proc.log_tail()}")
