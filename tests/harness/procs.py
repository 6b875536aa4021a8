"""Real processes for integration tests: see :mod:`siomesh.benchkit.procs`. Here
:func:`start_mesh` also puts the checkout on the nodes' ``PYTHONPATH``, so tests can serve
``tests.apps.*`` apps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from siomesh.benchkit import procs as _procs
from siomesh.benchkit.procs import (
    TEST_SECRET,
    MeshCluster,
    Node,
    Proc,
    ProcessError,
    RedisServer,
    end_all,
    http_get,
    node_argv,
    start_process,
    stop_all,
    wait_http,
)

__all__ = [
    "REPO_ROOT",
    "TEST_SECRET",
    "MeshCluster",
    "Node",
    "Proc",
    "ProcessError",
    "RedisServer",
    "end_all",
    "http_get",
    "node_argv",
    "start_mesh",
    "start_process",
    "stop_all",
    "wait_http",
]

#: The source checkout holding ``tests/``.
REPO_ROOT = Path(__file__).resolve().parents[2]


def start_mesh(count: int, workdir: Path, **options: Any) -> MeshCluster:
    """:func:`siomesh.benchkit.procs.start_mesh`, with ``tests.apps`` importable by the nodes."""
    options.setdefault("pythonpath", [str(REPO_ROOT)])
    return _procs.start_mesh(count, workdir, **options)
