"""Clients for tests/integration/test_workers_netns.py, run inside one of its network
namespaces (``ip netns exec NS python -m tests.apps.netns_clients CONFIG``), where the two
"machines" are reachable and the host's test process is not.

CONFIG (JSON): ``workers`` (every worker's private URL), ``public`` (each machine's public URL),
``clients``, ``shouts``. The script

1. waits (at most 30 s) until every worker sees every worker alive: one cluster;
2. gives each python-socketio client its own round-robin TCP balancer on this namespace's
   loopback (one machine per connection, the first one alternating by pairs of clients) and an HTTP
   session that opens a connection per request: consecutive requests of one session reach
   both machines, whichever owns it (one balancer for all would not do: clients that make their
   requests in lockstep would each stay on one machine);
3. connects ``clients`` clients through them (half polling-only, half upgrading), each calls
   ``whoami`` and ``echo``, joins a room; one shouts ``shouts`` numbered messages to the room;
4. prints one JSON object: the members each worker saw, the owners, the transports, the
   responses forwarded from a worker to the owner (``x-siomesh-via`` / ``x-siomesh-served-by``,
   the servers run with ``SIOMESH_SERVED_BY_HEADER=1``), what each client heard, and errors.

Every wait is bounded; it always prints and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import time
import urllib.request
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import socketio

ROOM = "netns"


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_siomesh/status", timeout=2) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def alive_members(url: str) -> list[str]:
    try:
        status = _status(url)
    except (OSError, ValueError):
        return []
    return sorted(m["url"] for m in status["members"] if m["state"] == "alive")


async def one_cluster(workers: list[str], timeout: float) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        seen = {w: await asyncio.to_thread(alive_members, w) for w in workers}
        if all(set(workers) <= set(members) for members in seen.values()):
            return seen
        if time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.3)


class Balancer:
    """Round robin over ``targets`` (host, port), one per TCP connection."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self.targets = itertools.cycle(targets)
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = next(self.targets)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, TimeoutError):
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 2)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class Client:
    def __init__(self, index: int, forwards: list[tuple[str, str]]) -> None:
        self.index = index
        self.polling_only = index % 2 == 0
        self.forwards = forwards
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._response)
        # one connection per request: each goes through the balancer to the next machine
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), trace_configs=[trace]
        )
        self.sio = socketio.AsyncClient(reconnection=False, http_session=self.http)
        self.sio.on("news", self._news)
        self.news: list[int] = []
        self.owner = ""
        self.errors: list[str] = []

    async def _response(self, session: Any, context: SimpleNamespace, params: Any) -> None:
        headers = params.response.headers
        via, owner = headers.get("x-siomesh-via"), headers.get("x-siomesh-served-by")
        if via and owner:
            self.forwards.append((via, owner))

    async def _news(self, data: dict[str, Any]) -> None:
        self.news.append(int(data["seq"]))

    async def start(self, url: str) -> None:
        transports = ["polling"] if self.polling_only else None
        try:
            await self.sio.connect(url, transports=transports, wait_timeout=15)
            self.owner = (await self.sio.call("whoami", timeout=15))["node"]
            for k in range(3):
                payload = {"client": self.index, "k": k, "pad": "y" * (k * 500)}
                reply = await self.sio.call("echo", payload, timeout=15)
                if reply != payload:
                    self.errors.append(f"client {self.index} echo {k}: got {reply!r}")
            if await self.sio.call("join", ROOM, timeout=15) is not True:
                self.errors.append(f"client {self.index}: join not acked")
        except Exception as exc:
            self.errors.append(f"client {self.index}: {type(exc).__name__}: {exc}")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sio.disconnect(), 2)
        eio = self.sio.eio
        for task in (eio.read_loop_task, eio.write_loop_task):
            if task is not None and not task.done():
                task.cancel()
        await self.http.close()


async def main(config: dict[str, Any]) -> dict[str, Any]:
    workers: list[str] = config["workers"]
    shouts: int = config["shouts"]
    result: dict[str, Any] = {"errors": []}
    result["members"] = await one_cluster(workers, 30)
    if not all(set(workers) <= set(m) for m in result["members"].values()):
        result["errors"].append("the workers did not form one cluster in 30 s")
        return result
    targets = [(str(urlsplit(u).hostname), int(urlsplit(u).port or 80)) for u in config["public"]]
    forwards: list[tuple[str, str]] = []
    crowd = [Client(i, forwards) for i in range(config["clients"])]
    # the first machine alternates by pairs: polling-only and upgrading sessions start on both
    first = [(i // 2) % 2 for i in range(len(crowd))]
    balancers = [Balancer(targets[k:] + targets[:k]) for k in first]
    try:
        for balancer in balancers:
            await balancer.start()
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    c.start(f"http://127.0.0.1:{b.port}")
                    for c, b in zip(crowd, balancers, strict=True)
                )
            ),
            60,
        )
        result["errors"] += [e for c in crowd for e in c.errors]
        result["owners"] = [c.owner for c in crowd]
        result["transports"] = [c.sio.transport() if c.sio.connected else None for c in crowd]
        if not result["errors"]:
            for seq in range(shouts):
                ok = await crowd[0].sio.call("shout", {"room": ROOM, "seq": seq}, timeout=15)
                if ok is not True:
                    result["errors"].append(f"shout {seq}: {ok!r}")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(len(c.news) < shouts for c in crowd):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a duplicate would show
        result["news"] = [c.news for c in crowd]
        result["forwards"] = forwards
    finally:
        await asyncio.wait_for(asyncio.gather(*(c.close() for c in crowd)), 20)
        await asyncio.gather(*(b.stop() for b in balancers))
    return result


if __name__ == "__main__":
    outcome = asyncio.run(asyncio.wait_for(main(json.loads(sys.argv[1])), 120))
    print(json.dumps(outcome))
