"""A forwarded request that makes the owner's app raise is answered as the owner answers it
directly (uvicorn's 500), at once: the stream handler always sends an answer, so the forwarder
never waits for its timeout nor counts the owner as lost."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.harness.procs import MeshCluster, start_mesh

PATH = "/socket.io/"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshCluster]:
    cluster = start_mesh(2, tmp_path_factory.mktemp("mesh"))
    try:
        yield cluster
    finally:
        cluster.end()


def _closed_session(client: httpx.Client, owner: str) -> str:
    """A session opened and closed by its client on ``owner`` (python-engineio keeps the
    closed socket a moment, and a POST to it raises inside the library)."""
    answer = client.get(owner + PATH, params={"EIO": "4", "transport": "polling"})
    assert answer.status_code == 200, answer.text
    sid = str(httpx.Response(200, content=answer.content[1:]).json()["sid"])
    closed = client.post(
        owner + PATH, params={"EIO": "4", "transport": "polling", "sid": sid}, content=b"1"
    )
    assert closed.status_code == 200, closed.text
    return sid


def _post_after_close(client: httpx.Client, url: str, sid: str) -> tuple[int, float]:
    started = time.monotonic()
    answer = client.post(
        url + PATH, params={"EIO": "4", "transport": "polling", "sid": sid}, content=b"40"
    )
    return answer.status_code, time.monotonic() - started


def test_post_after_close_forwarded_gets_the_owners_answer(mesh: MeshCluster) -> None:
    owner, other = mesh.urls
    with httpx.Client(timeout=20) as client:
        direct, _ = _post_after_close(client, owner, _closed_session(client, owner))
        lost = mesh.total("forward_lost")
        errors = mesh.total("forward_errors")
        status, took = _post_after_close(client, other, _closed_session(client, owner))
    # whatever the owner answers directly, the forwarded request gets the same, at once
    assert status == direct, (status, direct)
    assert took < 1.0, f"the forwarded answer took {took:.2f} s"
    assert mesh.total("forward_lost") == lost
    assert mesh.total("forward_errors") == errors
