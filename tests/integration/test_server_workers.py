"""``SioMesh(app)`` under ``uvicorn --workers N`` and gunicorn's uvicorn workers, configured by
``SIOMESH_SECRET`` alone: the workers open their own private peer ports and find each other
(siomesh.local_peers), so polling-only and upgrading clients (python-socketio's and the npm
socket.io-client's) work through one port with no stickiness; and gunicorn's reload (HUP),
TTIN, TTOU and a worker killed with SIGKILL lose no calls (or, for SIGKILL, only those in
flight on the dead worker), counted per phase. Two machines simulated with network namespaces:
tests/integration/test_workers_netns.py.

The load test runs the issue's scale: 200 polling-only + 200 default python-socketio clients
and 40 npm ones, through one port (about 14 s each on 2 cores: no longer than 50 clients took).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import socketio

from siomesh import SioMesh, local_peers
from siomesh.local_peers import bind_listener, public_listeners
from siomesh.rendezvous import Entry, Rendezvous, process_start, rendezvous_key
from tests.e2e import NODE_DIR, node_client, require
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.procs import TEST_SECRET
from tests.harness.servers import Server, running_server

# pip packages of the test extra: missing in an old virtualenv (skip), never in CI (fail)
HAS_GUNICORN = all(importlib.util.find_spec(m) for m in ("gunicorn", "uvicorn_worker"))
NEEDS_GUNICORN = "gunicorn and uvicorn-worker are not installed: pip install -e '.[test]'"


def needs_gunicorn() -> None:
    require(HAS_GUNICORN, NEEDS_GUNICORN)


CLIENTS = 400
NPM_CLIENTS = 40
SHOUTS = 20
ROOM = "all"


async def drop(client: socketio.AsyncClient) -> None:
    """Disconnect without waiting for the pending long-poll GET to end (up to ~30 s)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), 1.0)
    eio = client.eio
    for task in (eio.read_loop_task, eio.write_loop_task):
        if task is not None and not task.done():
            task.cancel()
    if eio.http is not None and not eio.http.closed:
        await eio.http.close()


async def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


class LoadClient:
    def __init__(self, index: int, polling_only: bool) -> None:
        self.index = index
        self.transports = ["polling"] if polling_only else None
        self.sio = socketio.AsyncClient(reconnection=False)
        self.news: list[int] = []
        self.owner = ""
        self.errors: list[str] = []
        self.sio.on("news", self._news)

    async def _news(self, data: dict[str, Any]) -> None:
        self.news.append(int(data["seq"]))

    async def start(self, url: str) -> None:
        try:
            await self.sio.connect(url, transports=self.transports, wait_timeout=15)
            who = await self.sio.call("whoami", timeout=15)
            self.owner = who["node"]
            for k in range(3):
                payload = {"client": self.index, "k": k, "pad": "x" * (k * 400)}
                reply = await self.sio.call("echo", payload, timeout=15)
                if reply != payload:
                    self.errors.append(f"client {self.index} echo {k}: got {reply!r}")
            assert await self.sio.call("join", ROOM, timeout=15) is True
        except Exception as exc:
            self.errors.append(f"client {self.index}: {type(exc).__name__}: {exc}")


class NpmClients:
    """``node room.js``: ``count`` npm socket.io-client sessions (half polling-only, half
    upgrading) that connect, call, join ``ROOM`` and record the ``news`` broadcasts; ended by
    pid whatever happens."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: dict[str, Any] = {}
        self.done: dict[str, Any] = {}

    async def start(self, url: str) -> None:
        node = node_client()
        self.proc = await asyncio.create_subprocess_exec(
            node, "room.js", url, str(self.count), str(SHOUTS), ROOM,
            cwd=NODE_DIR, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )  # fmt: skip

    async def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            assert self.proc.stderr is not None
            stderr = await asyncio.wait_for(self.proc.stderr.read(), 5)
            raise AssertionError(f"room.js ended early: {stderr.decode(errors='replace')}")
        result: dict[str, Any] = json.loads(line)
        return result

    async def wait_ready(self) -> list[str]:
        """Errors while connecting, calling and joining (every client joined or failed)."""
        self.ready = await self._line(120)
        errors = [f"npm {e}" for e in self.ready["errors"]]
        for i, transport in enumerate(self.ready["transports"]):
            # even indexes polling-only, odd ones upgraded (a WebSocket to whichever worker)
            if transport != ("polling" if i % 2 == 0 else "websocket"):
                errors.append(f"npm client {i}: transport {transport}")
        return errors

    async def news(self) -> list[str]:
        """Errors, and each client whose broadcasts were not ``0 .. SHOUTS-1`` once each."""
        self.done = await self._line(45)
        errors = [f"npm {e}" for e in self.done["errors"]]
        expected = list(range(SHOUTS))
        for i, (news, mode) in enumerate(zip(self.done["news"], self.done["modes"], strict=True)):
            if news != expected:
                errors.append(f"npm client {i} ({mode}): news {news}")
        return errors

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), 10)


async def load(url: str, clients: int, npm: int = 0) -> tuple[list[str], set[str]]:
    """``clients`` python-socketio clients (half polling-only, half the default: polling, then
    a WebSocket upgrade) and ``npm`` npm socket.io-client ones (the same halves) connect, call,
    join a room; one of them shouts ``SHOUTS`` numbered messages to it, each acked before the
    next. Every client must get each once, in order. Returns (errors, the workers that own
    sessions)."""
    crowd = [LoadClient(i, polling_only=i % 2 == 0) for i in range(clients)]
    npms = NpmClients(npm)
    errors: list[str] = []
    try:
        if npm:
            await npms.start(url)
        # connect in waves: a burst of 400 handshakes at once is not what this measures
        for start in range(0, clients, 50):
            await asyncio.wait_for(
                asyncio.gather(*(c.start(url) for c in crowd[start : start + 50])), 90
            )
        errors += [e for c in crowd for e in c.errors]
        if npm:
            errors += await npms.wait_ready()
        if errors:
            return errors, set()
        sender = crowd[0].sio
        for seq in range(SHOUTS):
            ok = await sender.call("shout", {"room": ROOM, "seq": seq}, timeout=15)
            assert ok is True
        await wait_until(lambda: all(len(c.news) >= SHOUTS for c in crowd), 20)
        expected = list(range(SHOUTS))
        for c in crowd:
            if c.news != expected:
                errors.append(f"client {c.index} ({c.transports}): news {c.news}")
        if npm:
            errors += await npms.news()
        return errors, {c.owner for c in crowd} | set(npms.ready.get("owners", []))
    finally:
        await asyncio.wait_for(
            asyncio.gather(*(drop(c.sio) for c in crowd), return_exceptions=True), 30
        )
        await npms.stop()


def forwarded(server: Server) -> int:
    return sum(int(server.status(w)["stats"]["forwarded"]) for w in server.workers())


# the uvicorn-worker package's worker is the same code as uvicorn.workers': it serves the
# first "machine" of test_across_machines_every_worker_joins_one_cluster
@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
async def test_workers_mesh_with_only_a_secret(kind: str, tmp_path: Path) -> None:
    if kind != "uvicorn":
        needs_gunicorn()
    node_client()  # skips (fails under CI) without Node.js
    started = time.monotonic()
    # a short drain: the server stops sooner at the end (draining is not what this measures)
    with running_server(kind, tmp_path, workers=3, env={"SIOMESH_DRAIN_TIMEOUT": "1"}) as server:
        ready = time.monotonic() - started
        workers = server.workers()
        assert len(workers) == 3
        assert all(w.url.startswith("http://127.0.0.1:") for w in workers)
        before = forwarded(server)
        errors, owners = await load(server.url, CLIENTS, NPM_CLIENTS)
        assert errors == [], f"{len(errors)} errors:\n" + "\n".join(errors[:20])
        # the kernel hands connections to whichever worker accepts first: sessions spread,
        # and the requests of a session reach other workers, which forwarded them
        assert owners <= {w.url for w in workers}
        assert len(owners) >= 2, owners
        assert forwarded(server) > before
        print(
            f"\n{kind}: meshed in {ready:.1f} s, {CLIENTS} python-socketio clients and "
            f"{NPM_CLIENTS} npm socket.io-client ones, 0 errors, {SHOUTS} broadcasts each once "
            f"and in order"
        )
    # each worker removed its rendezvous file on its way out
    assert server.workers(None) == []


class Caller:
    """A client calling ``echo`` every 0.2 s; counts answered and lost calls per phase."""

    def __init__(self, index: int, polling_only: bool) -> None:
        self.index = index
        self.transports = ["polling"] if polling_only else None
        self.sio = socketio.AsyncClient(reconnection_delay=0.1, reconnection_delay_max=0.5)
        self.phase = "steady"
        self.answered: dict[str, int] = {}
        self.lost: dict[str, list[str]] = {}
        self.disconnects: dict[str, int] = {}
        self.sio.on("disconnect", self._disconnect)

    async def _disconnect(self, *args: Any) -> None:
        self.disconnects[self.phase] = self.disconnects.get(self.phase, 0) + 1

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            await asyncio.sleep(0.2)
            if not self.sio.connected:
                continue
            n += 1
            phase = self.phase
            payload = {"i": self.index, "n": n}
            sent = time.time()
            try:
                reply = await self.sio.call("echo", payload, timeout=5)
                if reply != payload:
                    raise AssertionError(f"got {reply!r}")
                self.answered[phase] = self.answered.get(phase, 0) + 1
            except Exception as exc:
                self.lost.setdefault(phase, []).append(
                    f"client {self.index} ({self.transports or 'default'}) call {n} sent "
                    f"{time.strftime('%H:%M:%S', time.gmtime(sent))}{f'{sent % 1:.3f}'[1:]} UTC: "
                    f"{type(exc).__name__}: {exc}"
                )


async def _connected_callers(url: str, count: int) -> list[Caller]:
    """``count`` callers (half polling-only) connected to ``url``, bounded."""
    callers = [Caller(i, polling_only=i % 2 == 0) for i in range(count)]
    await asyncio.wait_for(
        asyncio.gather(
            *(c.sio.connect(url, transports=c.transports, wait_timeout=15) for c in callers)
        ),
        60,
    )
    return callers


async def test_gunicorn_reload_ttin_ttou_and_kill_lose_no_calls(tmp_path: Path) -> None:
    """30 clients (half polling-only) call every 0.2 s through a gunicorn reload (HUP: new
    workers start, then the old ones drain), a TTIN (a fourth worker joins), a TTOU (one
    worker drains and goes) and a SIGKILL (gunicorn starts a replacement). Lost calls are
    counted per phase and printed: the goal for HUP, TTIN and TTOU is none (measured 0 or 1
    for HUP and TTOU: the drop race of docs/deployment.md, "Limits"); SIGKILL loses the calls
    in flight on the killed worker."""
    needs_gunicorn()
    # python-engineio's client waits for its pending long-poll before it reconnects: a short
    # ping interval bounds that wait (it changes nothing else)
    env = {"ECHO_PING_INTERVAL": "5", "ECHO_PING_TIMEOUT": "5"}
    with running_server("gunicorn", tmp_path, workers=3, env=env) as server:
        callers = await _connected_callers(server.url, 30)
        stop = asyncio.Event()
        loops = [asyncio.ensure_future(c.run(stop)) for c in callers]

        def phase(name: str) -> None:
            for c in callers:
                c.phase = name

        timings: dict[str, float] = {}
        try:
            await asyncio.sleep(1.5)
            # HUP: gunicorn starts 3 new workers and SIGTERMs the 3 old ones at once
            old = [w.pid for w in server.workers()]
            phase("hup")
            t0 = time.monotonic()
            server.signal(signal.SIGHUP)
            await asyncio.to_thread(server.wait_meshed, 3, exclude=old, timeout=60)
            await wait_until(lambda: not server.workers(None)[3:], 30)
            timings["hup"] = time.monotonic() - t0
            await asyncio.sleep(2.0)
            # TTIN: one worker more, which joins while everyone calls
            phase("ttin")
            t0 = time.monotonic()
            server.signal(signal.SIGTTIN)
            await asyncio.to_thread(server.wait_meshed, 4, timeout=60)
            timings["ttin"] = time.monotonic() - t0
            await asyncio.sleep(2.0)
            # TTOU: one worker fewer
            phase("ttou")
            t0 = time.monotonic()
            server.signal(signal.SIGTTOU)
            await asyncio.to_thread(server.wait_meshed, 3, timeout=60)
            timings["ttou"] = time.monotonic() - t0
            await asyncio.sleep(2.0)
            # SIGKILL: a crash; gunicorn starts a replacement
            victim = server.workers()[0].pid
            phase("kill")
            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            await asyncio.to_thread(server.wait_meshed, 3, exclude=[victim], timeout=60)
            timings["kill"] = time.monotonic() - t0
            await asyncio.sleep(3.0)
            phase("after")
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*loops, return_exceptions=True), 15)
            connected = await wait_until(lambda: all(c.sio.connected for c in callers), 15)
        finally:
            stop.set()
            await asyncio.wait_for(
                asyncio.gather(*(drop(c.sio) for c in callers), return_exceptions=True), 30
            )
        report: dict[str, dict[str, int]] = {}
        for name in ("steady", "hup", "ttin", "ttou", "kill", "after"):
            report[name] = {
                "answered": sum(c.answered.get(name, 0) for c in callers),
                "lost": sum(len(c.lost.get(name, [])) for c in callers),
                "disconnects": sum(c.disconnects.get(name, 0) for c in callers),
            }
        timing = {k: round(v, 1) for k, v in timings.items()}
        print(f"\ngunicorn restarts, 30 clients calling every 0.2 s: {report}, took {timing}")
        lost = {name: [e for c in callers for e in c.lost.get(name, [])] for name in report}
        assert connected, [c.index for c in callers if not c.sio.connected]
        for name in ("steady", "hup", "ttin", "ttou", "after"):
            assert report[name]["answered"] > 0, report
        assert lost["steady"] == [] and lost["after"] == [], lost
        # Goal 0. Measured 0 or 1 per reload (30 sessions drained at once) and per TTOU: a call
        # sent in the very instant its session is ended is lost (docs/deployment.md, "Limits")
        assert len(lost["hup"]) <= 3, lost["hup"]
        # a worker that joins ends no session: nothing may be lost, nobody reconnects
        assert lost["ttin"] == [], lost["ttin"]
        assert report["ttin"]["disconnects"] == 0, report
        assert len(lost["ttou"]) <= 2, lost["ttou"]
        # a SIGKILL loses what was in flight on the dead worker: a few calls at most
        assert len(lost["kill"]) <= 15, lost["kill"]


async def test_gunicorn_max_requests_recycles_workers_without_losing_calls(
    tmp_path: Path,
) -> None:
    """gunicorn ``--max-requests``: each worker exits after a few hundred requests (uvicorn
    stops listening, then the lifespan shutdown drains it) and gunicorn starts another; 30
    clients calling every 0.2 s keep getting answers."""
    needs_gunicorn()
    env = {"ECHO_PING_INTERVAL": "5", "ECHO_PING_TIMEOUT": "5"}
    extra = ["--max-requests", "300", "--max-requests-jitter", "50"]
    with running_server("gunicorn", tmp_path, workers=3, env=env, extra=extra) as server:
        callers = await _connected_callers(server.url, 30)
        stop = asyncio.Event()
        loops = [asyncio.ensure_future(c.run(stop)) for c in callers]
        try:
            await asyncio.sleep(10.0)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*loops, return_exceptions=True), 15)
            connected = await wait_until(lambda: all(c.sio.connected for c in callers), 15)
        finally:
            stop.set()
            await asyncio.wait_for(
                asyncio.gather(*(drop(c.sio) for c in callers), return_exceptions=True), 30
            )
        recycled = server.log().count("reached its request limit")
        answered = sum(c.answered.get("steady", 0) for c in callers)
        lost = [e for c in callers for e in c.lost.get("steady", [])]
        disconnects = sum(c.disconnects.get("steady", 0) for c in callers)
        print(
            f"\ngunicorn --max-requests 300: {recycled} workers recycled, {answered} calls "
            f"answered, {len(lost)} lost, {disconnects} reconnections"
        )
        assert recycled >= 2, server.log()[-3000:]
        assert connected
        assert answered > 500
        # measured 0 in 8 runs of 9, 4 in one (the drop race of docs/deployment.md, "Limits")
        assert len(lost) <= 5, "\n".join(lost)


def test_across_machines_every_worker_joins_one_cluster(tmp_path: Path) -> None:
    """Two servers stand for two machines (each its own public port and rendezvous; gunicorn
    with the uvicorn-worker package's worker, and uvicorn): each names the address its workers
    are reached at and a port range; the second one seeds from a port of the first; all four
    workers form one cluster, and a room broadcast crosses over."""
    needs_gunicorn()
    ranges = [free_range(4), free_range(4)]
    first = {
        "SIOMESH_ADVERTISE_HOST": "127.0.0.1",
        "SIOMESH_PEER_PORTS": f"{ranges[0]}-{ranges[0] + 3}",
        "SIOMESH_DRAIN_TIMEOUT": "1",
    }
    second = {
        **first,
        "SIOMESH_PEER_PORTS": f"{ranges[1]}-{ranges[1] + 3}",
        "SIOMESH_PEERS": f"http://127.0.0.1:{ranges[0]}",
    }
    with (
        running_server("uvicorn-worker", tmp_path, workers=2, env=first) as a,
        running_server("uvicorn", tmp_path, workers=2, env=second) as b,
    ):
        everyone = {w.url for w in [*a.workers(), *b.workers()]}
        assert len(everyone) == 4
        for worker, low in [(w, ranges[0]) for w in a.workers()] + [
            (w, ranges[1]) for w in b.workers()
        ]:
            assert low <= int(worker.url.rsplit(":", 1)[1]) < low + 4, worker
        deadline = time.monotonic() + 30
        while not all(everyone <= s.alive_members(w) for s in (a, b) for w in s.workers()):
            assert time.monotonic() < deadline, [
                (w.url, sorted(s.alive_members(w))) for s in (a, b) for w in s.workers()
            ]
            time.sleep(0.2)
        asyncio.run(_broadcast_across(a.url, b.url))


async def _broadcast_across(url_a: str, url_b: str) -> None:
    listener, sender = LoadClient(0, polling_only=True), LoadClient(1, polling_only=False)
    try:
        await listener.start(url_a)
        await sender.start(url_b)
        assert listener.errors == [] and sender.errors == [], listener.errors + sender.errors
        for seq in range(5):
            assert await sender.sio.call("shout", {"room": ROOM, "seq": seq}, timeout=10)
        assert await wait_until(lambda: len(listener.news) >= 5, 10), listener.news
        assert listener.news == list(range(5))
    finally:
        await asyncio.gather(drop(listener.sio), drop(sender.sio), return_exceptions=True)


def free_range(count: int) -> int:
    """The first of ``count`` consecutive loopback ports free now."""
    for _ in range(50):
        base = free_port()
        if base + count >= 65536:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind((LOOPBACK, port))
            return base
        except OSError:
            continue
    raise AssertionError(f"no {count} consecutive free ports")


# -- in this process: the rendezvous, the public port, misconfigurations ------------------------


def _app(env: dict[str, str]) -> SioMesh:
    sio = socketio.AsyncServer(async_mode="asgi")
    return SioMesh(socketio.ASGIApp(sio), env={"SIOMESH_SECRET": TEST_SECRET, **env})


def _write(directory: Path, entry: Entry, name: str) -> Path:
    path = directory / name
    path.write_bytes(entry.to_json())
    return path


def test_rendezvous_removes_stale_files_and_sorts_the_rest(tmp_path: Path) -> None:
    me = Entry.for_this_process("http://127.0.0.1:1", TEST_SECRET)
    rendezvous = Rendezvous(tmp_path, "8000", me, private=False)
    rendezvous.open()
    assert rendezvous.path.exists()
    gone = subprocess.Popen(["true"])
    gone.wait()
    parent = os.getppid()
    started = process_start(parent)
    peer = dataclasses.replace(me, url="http://127.0.0.1:2", pid=parent, start=started)
    files = {
        "dead": _write(rendezvous.directory, dataclasses.replace(me, pid=gone.pid), "a.json"),
        "reused": _write(
            rendezvous.directory,
            dataclasses.replace(peer, start=(started or 0) + 12345),
            "b.json",
        ),
        "peer": _write(rendezvous.directory, peer, "c.json"),
        "other": _write(
            rendezvous.directory, dataclasses.replace(peer, secret_id="0" * 16), "d.json"
        ),
        "foreign": _write(
            rendezvous.directory, dataclasses.replace(peer, netns="net:[1]"), "e.json"
        ),
    }
    (rendezvous.directory / "junk.json").write_text("{not json")
    scan = rendezvous.scan()
    assert [e.url for e in scan.peers] == [peer.url]
    assert [e.secret_id for e in scan.other_secret] == ["0" * 16]
    assert [e.netns for e in scan.foreign] == ["net:[1]"]
    assert sorted(e.pid for e in scan.removed) == sorted([gone.pid, parent])
    assert not files["dead"].exists() and not files["reused"].exists()
    assert files["peer"].exists() and files["foreign"].exists()
    rendezvous.set_state("draining")
    assert Entry.from_json(rendezvous.path.read_bytes()).state == "draining"  # type: ignore[union-attr]
    rendezvous.remove()
    assert not rendezvous.path.exists()


def test_the_public_port_is_read_from_the_listening_descriptors() -> None:
    with bind_listener(LOOPBACK, 0) as listener, socket.socket() as client:
        port = listener.getsockname()[1]
        client.connect((LOOPBACK, port))  # a connected socket is no listener
        assert port in public_listeners()
        assert port not in public_listeners(exclude={listener.fileno()})
        assert client.getsockname()[1] not in public_listeners()
    assert rendezvous_key([8443, 8000, 8000]) == "8000+8443"
    assert rendezvous_key(["/run/app.sock"]) == "_run_app.sock"


async def test_misconfigurations_are_logged_with_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="siomesh")
    monkeypatch.setattr(local_peers, "ALONE_AFTER", 0.0)
    # a runtime directory that cannot be written (here: a file where a directory should be)
    blocked = tmp_path / "file"
    blocked.write_text("")
    mesh = _app({"SIOMESH_RUNTIME_DIR": str(blocked / "sub"), "SIOMESH_PUBLIC_PORT": "8000"})
    await mesh.startup()
    try:
        assert "cannot write the rendezvous under" in caplog.text
        assert "SIOMESH_RUNTIME_DIR" in caplog.text
    finally:
        await mesh.shutdown()
    caplog.clear()
    # nothing to find (one worker per container): fine, said at INFO
    runtime = tmp_path / "runtime"
    mesh = _app({"SIOMESH_RUNTIME_DIR": str(runtime), "SIOMESH_PUBLIC_PORT": "8001"})
    await mesh.startup()
    try:
        alone = [r for r in caplog.records if "this node is alone" in r.getMessage()]
        assert [r.levelno for r in alone] == [logging.INFO]
    finally:
        await mesh.shutdown()
    assert list((runtime / "8001").iterdir()) == []  # its file went with it
    caplog.clear()
    # another app, with another secret, on the same port
    (runtime / "8002").mkdir(mode=0o700)
    parent = os.getppid()
    other = Entry.for_this_process("http://127.0.0.1:3", "another-secret-of-another-app")
    other = dataclasses.replace(other, pid=parent, start=process_start(parent))
    _write(runtime / "8002", other, f"{parent}-3.json")
    mesh = _app({"SIOMESH_RUNTIME_DIR": str(runtime), "SIOMESH_PUBLIC_PORT": "8002"})
    await mesh.startup()
    try:
        [error] = [r for r in caplog.records if "with another secret" in r.getMessage()]
        assert error.levelno == logging.ERROR
        assert "different ports" in error.getMessage()
        assert "SIOMESH_SECRET" in error.getMessage()
    finally:
        await mesh.shutdown()
    caplog.clear()
    # other machines as seeds while this worker advertises loopback (nothing is dialled here)
    mesh = _app({"SIOMESH_PEERS": "http://192.0.2.7:9000", "SIOMESH_RUNTIME_DIR": str(runtime)})
    assert mesh.local is not None
    mesh.local._warn_about_seeds()
    assert "SIOMESH_ADVERTISE_HOST" in caplog.text
    mesh.local.abandon()
    # built before the server forked its workers (gunicorn --preload)
    mesh = _app({"SIOMESH_RUNTIME_DIR": str(runtime)})
    assert mesh.local is not None
    mesh.local.built_in = -1
    with pytest.raises(RuntimeError, match="--preload"):
        await mesh.startup()
    mesh.local.abandon()
