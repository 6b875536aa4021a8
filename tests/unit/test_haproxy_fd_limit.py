"""The shipped HAProxy configs on a machine whose open-file hard limit is lower than they ask
for (siomesh.benchkit.balancers.fit_haproxy_maxconn): HAProxy itself refuses to start there,
the harness lowers ``maxconn`` to fit and it runs."""

from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path

import pytest

from siomesh.benchkit import balancers
from siomesh.benchkit.ports import free_port
from tests.conftest import require_binary

CONFIG = """global
    maxconn 9000

defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s

frontend probe
    bind 127.0.0.1:{port}
    http-request return status 200
"""


def _with_hard_limit(monkeypatch: pytest.MonkeyPatch, hard: int) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (min(hard, 1024), hard))


@pytest.mark.parametrize(
    ("hard", "maxconn"),
    [(20000, 9000), (18064, 9000), (12000, 5968), (1024, 480), (500, 256)],
)
def test_maxconn_fits_the_hard_limit(
    monkeypatch: pytest.MonkeyPatch, hard: int, maxconn: int
) -> None:
    _with_hard_limit(monkeypatch, hard)
    text = balancers.fit_haproxy_maxconn(CONFIG.format(port=1))
    assert f"    maxconn {maxconn}\n" in text
    assert text.count("maxconn") == 1


def test_no_limit_or_no_maxconn_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_hard_limit(monkeypatch, resource.RLIM_INFINITY)
    assert balancers.fit_haproxy_maxconn(CONFIG) == CONFIG
    assert balancers.fit_haproxy_maxconn("defaults\n    mode http\n") == "defaults\n    mode http\n"


def _start_limited(config: Path, hard: int) -> subprocess.Popen[bytes]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return subprocess.Popen(
        [require_binary("haproxy"), "-db", "-f", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=limit,
    )


def test_haproxy_refuses_the_unfitted_config_and_runs_the_fitted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hard = 12000
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < hard:
        pytest.skip("this machine's own hard limit is below the test's")
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(port=free_port()))
    refused = _start_limited(config, hard)
    try:
        out, _ = refused.communicate(timeout=10)
    finally:
        refused.kill()
    assert refused.returncode != 0 and b"Cannot raise FD limit" in out, out

    _with_hard_limit(monkeypatch, hard)
    config.write_text(balancers.fit_haproxy_maxconn(config.read_text()))
    running = _start_limited(config, hard)
    try:
        time.sleep(1.0)
        assert running.poll() is None, running.communicate(timeout=5)[0]
    finally:
        running.kill()
        running.wait(timeout=5)
