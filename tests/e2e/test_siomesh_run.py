"""``siomesh run`` as a real process: N workers on one SO_REUSEPORT port (no stickiness at all),
loaded by polling python-socketio clients; and the command's error cases."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import socketio

from tests.e2e import (
    LOOPBACK,
    REPO,
    Cluster,
    free_port,
    http_get,
    run_cluster,
    siomesh_cmd,
    stop_process,
)

ECHO_APP = "tests.apps.echo:app"
CLIENTS = 30
ROUND_TRIPS = 5


@pytest.fixture(scope="module")
def echo_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with run_cluster(
        ["run", ECHO_APP, "--workers", "3"], tmp_path_factory.mktemp("run"), workers=3
    ) as cluster:
        yield cluster


async def drop(client: socketio.AsyncClient) -> None:
    """Disconnect without waiting for the pending long-poll GET to end (up to ~30 s)."""
    with contextlib.suppress(Exception):  # TimeoutError included
        await asyncio.wait_for(client.disconnect(), 1.0)
    eio = client.eio
    for task in (eio.read_loop_task, eio.write_loop_task):
        if task is not None and not task.done():
            task.cancel()
    if eio.http is not None and not eio.http.closed:
        await eio.http.close()


async def echo_client(url: str, index: int) -> tuple[str, list[str]]:
    """Connect over polling only, do the acked round trips; (owner URL, errors)."""
    errors: list[str] = []
    client = socketio.AsyncClient(reconnection=False)
    owner = ""
    try:
        await client.connect(url, transports=["polling"], wait_timeout=10)
        owner = await client.call("whoami", timeout=10)
        for k in range(ROUND_TRIPS):
            payload = {"client": index, "round": k, "pad": "x" * (k * 300)}
            reply = await client.call("echo", payload, timeout=10)
            if reply != payload:
                errors.append(f"client {index} round {k}: got {reply!r}")
    except Exception as exc:
        errors.append(f"client {index}: {type(exc).__name__}: {exc}")
    finally:
        await drop(client)
    return owner, errors


def mesh_stats(cluster: Cluster) -> list[dict[str, int]]:
    stats = []
    for worker in cluster.workers:
        status, body = http_get(worker + "/_siomesh/status")
        assert status == 200
        stats.append(json.loads(body)["stats"])
    return stats


async def test_polling_load_through_one_port_without_stickiness(echo_cluster: Cluster) -> None:
    before = sum(s["forwarded"] for s in mesh_stats(echo_cluster))
    results = await asyncio.wait_for(
        asyncio.gather(*(echo_client(echo_cluster.url, i) for i in range(CLIENTS))), 90
    )
    errors = [e for _, errs in results for e in errs]
    assert errors == [], f"{len(errors)} failures:\n" + "\n".join(errors[:20])
    owners = {owner for owner, _ in results}
    assert owners <= set(echo_cluster.workers)
    # The kernel spreads connections at random: 30 sessions on one worker would be a fluke.
    assert len(owners) >= 2, owners
    # And the requests of a session do land on other workers: the mesh forwarded them.
    forwarded = sum(s["forwarded"] for s in mesh_stats(echo_cluster)) - before
    assert forwarded > 0


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        siomesh_cmd(*args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_status_against_a_worker_prints_members(echo_cluster: Cluster) -> None:
    me, *others = echo_cluster.workers
    result = run_cli("status", me)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"node     {me}")
    assert "state=serving" in out
    assert "members  3" in out
    for peer in others:
        assert peer in out
    raw = run_cli("status", me, "--json")
    assert raw.returncode == 0, raw.stderr
    data = json.loads(raw.stdout)
    assert data["node"] == me
    assert {m["url"] for m in data["members"]} == {me, *others}
    assert all(m["state"] == "alive" for m in data["members"])


def test_status_of_a_closed_port_exits_1_with_a_clear_message() -> None:
    port = free_port()  # nothing listens there once the probe socket is closed
    result = run_cli("status", f"http://{LOOPBACK}:{port}", "--timeout", "2")
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"cannot read http://{LOOPBACK}:{port}/_siomesh/status" in result.stderr
    assert "Connection refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_zero_workers_is_a_usage_error() -> None:
    result = run_cli("run", ECHO_APP, "--workers", "0", "--port", str(free_port()))
    assert result.returncode == 2
    assert "--workers" in result.stderr
    assert "must be at least 1" in result.stderr


def _refused_runs(
    tmp_path: Path, specs: list[str], *, workers: int, env: dict[str, str] | None = None
) -> dict[str, tuple[int | None, str]]:
    """Start ``siomesh run SPEC`` for every spec at once (each on a free port) and wait, at most
    60 s in all, for each to exit; (exit status, stderr) per spec. Every process is ended."""
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    started = time.monotonic()
    try:
        for spec in specs:
            err = tmp_path / f"{spec.replace(':', '_')}.err"
            with err.open("wb") as sink:
                procs[spec] = (
                    subprocess.Popen(
                        siomesh_cmd(
                            "run", spec, "--workers", str(workers), "--port", str(free_port())
                        ),
                        cwd=REPO,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=sink,
                        start_new_session=True,
                    ),
                    err,
                )
        for spec, (proc, _) in procs.items():
            try:
                proc.wait(timeout=max(1.0, 60 - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                pytest.fail(f"siomesh run {spec} still running after 60 s")
    finally:
        for proc, _ in procs.values():
            stop_process(proc)
    return {
        spec: (proc.returncode, err.read_text(errors="replace"))
        for spec, (proc, err) in procs.items()
    }


def test_bad_app_spec_exits_nonzero_naming_the_problem(tmp_path: Path) -> None:
    cases = {
        "nosuch_module_xyz:app": "cannot import 'nosuch_module_xyz'",
        "tests.apps.echo:nothing_here": "has no attribute 'nothing_here'",
        "no_colon_here": "expected MODULE:APP",
    }
    started = time.monotonic()
    results = _refused_runs(tmp_path, list(cases), workers=1)
    elapsed = time.monotonic() - started
    slow_or_noisy = []
    for spec, expected in cases.items():
        returncode, stderr = results[spec]
        assert returncode not in (0, None), spec
        assert expected in stderr, f"{spec}: {stderr[-2000:]}"
        if "Traceback" in stderr:
            slow_or_noisy.append(spec)
    # The supervisor imports the app first: one line, at once, no worker restart loop.
    assert elapsed < 15, f"bad apps took {elapsed:.1f} s to be refused"
    assert not slow_or_noisy, f"tracebacks instead of one-line errors: {slow_or_noisy}"


def test_sigterm_stops_every_worker(tmp_path: Path) -> None:
    with run_cluster(["run", ECHO_APP, "--workers", "2"], tmp_path, workers=2) as cluster:
        started = time.monotonic()
        cluster.proc.send_signal(signal.SIGTERM)
        returncode = cluster.proc.wait(timeout=20)
        took = time.monotonic() - started
        assert returncode == 0, cluster.output()
        assert took < 15
        for url in [cluster.url, *cluster.workers]:
            port = int(url.rsplit(":", 1)[1])
            with socket.socket() as sock:
                sock.settimeout(1)
                assert sock.connect_ex((LOOPBACK, port)) != 0, f"{url} still accepts"


NOT_ASGI = """
import socketio

sio = socketio.AsyncServer(async_mode="asgi")
sync_sio = socketio.Server()
wsgi = socketio.WSGIApp(sync_sio)


def flask_like(environ, start_response):
    return []


async def no_server(scope, receive, send):
    pass
"""


def test_an_object_that_is_not_an_asgi_app_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "notasgi.py").write_text(NOT_ASGI)
    cases = {
        "notasgi:sio": ("is a socketio.AsyncServer", "socketio.ASGIApp(sio)"),
        "notasgi:sync_sio": ("synchronous socketio.Server", "async_mode='asgi'"),
        "notasgi:wsgi": ("is a WSGI app", "socketio.ASGIApp(sio)"),
        "notasgi:flask_like": ("looks like a WSGI app", "socketio.ASGIApp(sio)"),
        "notasgi:no_server": ("no python-socketio server found", "server=sio"),
    }
    started = time.monotonic()
    results = _refused_runs(
        tmp_path, list(cases), workers=2, env=dict(os.environ, PYTHONPATH=str(tmp_path))
    )
    # Refused by the supervisor before any worker starts: no restart loop.
    assert time.monotonic() - started < 20
    for spec, (problem, fix) in cases.items():
        returncode, stderr = results[spec]
        lines = stderr.strip().splitlines()
        assert returncode == 1, f"{spec}: {returncode} {lines}"
        assert len(lines) == 1, f"{spec}: one line expected, got {lines}"
        assert lines[0].startswith(f"siomesh: {spec}"), lines
        assert problem in lines[0] and fix in lines[0], lines[0]


def test_a_port_served_by_another_cluster_is_refused(echo_cluster: Cluster) -> None:
    port = str(echo_cluster.port)
    for command in (["run", ECHO_APP, "--workers", "1"], ["demo", "--workers", "1"]):
        result = run_cli(*command, "--port", port, "--host", LOOPBACK)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, result.stderr
        assert len(lines) == 1, lines
        assert f"{echo_cluster.url}/ is already served by another siomesh cluster" in lines[0]
        assert "--port" in lines[0]
        assert "worker 0:" not in result.stdout
    # The running cluster is undisturbed: all of its workers still serve the port.
    assert echo_cluster.proc.poll() is None
    assert mesh_stats(echo_cluster)


def test_a_port_used_by_another_process_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind((LOOPBACK, 0))
        other.listen()
        port = other.getsockname()[1]
        result = run_cli("run", ECHO_APP, "--port", str(port), "--host", LOOPBACK)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"siomesh: port {port} on {LOOPBACK} is already in use by another process: stop it, "
        "or choose another --port"
    )


def test_a_placeholder_secret_is_refused_before_any_worker_starts() -> None:
    secret = "change-me-to-32-random-bytes-base64url"  # examples/kubernetes/siomesh.yaml
    result = run_cli("run", ECHO_APP, "--secret", secret, "--port", str(free_port()))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, lines
    assert "secret looks like a placeholder" in lines[0]
    assert "token_urlsafe" in lines[0]


async def test_sighup_restarts_workers_one_by_one_and_clients_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rolling restart (SIGHUP): each worker drains, its clients move to the others, it comes
    back; every client stays connected and keeps getting answers.

    python-engineio's client, after a failed request, waits for its pending long-poll before it
    reconnects: up to ``ping_interval`` when that poll is held by a live node. A short ping
    interval keeps the test's bound short; it does not change what is tested."""
    monkeypatch.setenv("ECHO_PING_INTERVAL", "5")
    monkeypatch.setenv("ECHO_PING_TIMEOUT", "5")
    with run_cluster(["run", ECHO_APP, "--workers", "3"], tmp_path, workers=3) as cluster:
        clients: list[socketio.AsyncClient] = []
        answered = [0] * 8
        failed: list[list[str]] = [[] for _ in range(8)]
        stop = asyncio.Event()

        async def calls(index: int, client: socketio.AsyncClient) -> None:
            n = 0
            while not stop.is_set():
                await asyncio.sleep(0.2)
                if not client.connected:
                    continue
                n += 1
                try:
                    assert await client.call("echo", {"i": index, "n": n}, timeout=5) == {
                        "i": index,
                        "n": n,
                    }
                    answered[index] += 1
                except Exception as exc:
                    failed[index].append(repr(exc))

        reasons: list[list[str]] = [[] for _ in range(8)]
        for i in range(8):
            client = socketio.AsyncClient(reconnection_delay=0.1, reconnection_delay_max=0.5)
            client.on("disconnect", lambda reason=None, i=i: reasons[i].append(str(reason)))
            transports = ["polling"] if i % 2 == 0 else ["websocket"]
            await asyncio.wait_for(client.connect(cluster.url, transports=transports), 15)
            clients.append(client)
        loops = [asyncio.ensure_future(calls(i, c)) for i, c in enumerate(clients)]
        try:
            await asyncio.sleep(1.0)
            before = list(answered)
            cluster.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while "rolling restart done" not in cluster.output():
                assert time.monotonic() < deadline, cluster.output()
                await asyncio.sleep(0.2)
            assert cluster.output().count("restarting worker") == 3
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*loops, return_exceptions=True), 10)
            for i, client in enumerate(clients):
                for _ in range(150):  # a reconnection may still be under way: bounded wait
                    if client.connected:
                        break
                    await asyncio.sleep(0.1)
                task = client._reconnect_task
                assert client.connected, (
                    i,
                    reasons[i],
                    failed[i],
                    client.eio.state,
                    task,
                    task.exception() if task is not None and task.done() else None,
                )
                assert answered[i] > before[i] + 5, (i, answered[i], before[i])
                # a client can lose the call in flight each time its worker is drained
                assert len(failed[i]) <= 3, (i, failed[i])
            for worker in cluster.workers:
                assert http_get(worker + "/_siomesh/health")[0] == 200
        finally:
            stop.set()
            for client in clients:
                await drop(client)
