"""In-memory peer links for unit tests (no sockets).

* :class:`LinkPair`: two real :class:`~siomesh.links.link.Link` objects connected back to back
  through asyncio queues (the dialler's writes are the acceptor's reads and vice versa);
  ``features=True`` makes them agree on this release's features (``BATCH`` frames, binary
  meta) as two nodes of this release do.
* :class:`MemoryNet`: an in-memory "network" of :class:`~siomesh.SioMesh` nodes. Each node's
  :class:`~siomesh.links.pool.LinkPool` dials the others through a fake aiohttp session whose
  WebSocket runs the target node's ASGI app directly, so the real offer/hello/ack handshake,
  the real middleware routing of ``/_siomesh/link`` and the real ``LinkPool.accept`` are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from typing import TYPE_CHECKING, Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from siomesh.counters import Stats
from siomesh.links.handshake import LINK_FEATURES
from siomesh.links.link import Dispatcher, Link

if TYPE_CHECKING:
    from siomesh import SioMesh

KEY_D2A = b"test key: dialler to acceptor"
KEY_A2D = b"test key: acceptor to dialler"
DIALLER_URL = "http://dialler.test:1"
ACCEPTOR_URL = "http://acceptor.test:2"


def new_stats() -> Stats:
    """The node counters a Link counts into (every counter starts at 0)."""
    return Stats()


class LinkPair:
    """A dialler and an acceptor Link back to back. Build inside a running event loop.

    ``to_acceptor`` / ``to_dialler`` are the raw transports: put bytes there to inject a frame
    into a reader (``None`` ends that reader, like a closed connection). ``close_codes`` records
    the close code each side closed its connection with.
    """

    def __init__(
        self,
        *,
        kind: str = "data",
        dialler_dispatcher: Dispatcher | None = None,
        acceptor_dispatcher: Dispatcher | None = None,
        max_buffer: int = 1 << 20,
        keys: tuple[bytes, bytes] = (KEY_D2A, KEY_A2D),
        features: bool = False,
    ) -> None:
        self.to_acceptor: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.to_dialler: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.wire_to_acceptor: list[bytes] = []  # every frame the dialler wrote
        self.wire_to_dialler: list[bytes] = []
        self.close_codes: dict[str, list[int]] = {"dialler": [], "acceptor": []}
        self.dialler_stats = new_stats()
        self.acceptor_stats = new_stats()
        self.dialler_dispatcher = dialler_dispatcher or Dispatcher()
        self.acceptor_dispatcher = acceptor_dispatcher or Dispatcher()
        d2a, a2d = keys

        async def write_to_acceptor(frame: bytes) -> None:
            self.wire_to_acceptor.append(frame)
            await self.to_acceptor.put(frame)

        async def write_to_dialler(frame: bytes) -> None:
            self.wire_to_dialler.append(frame)
            await self.to_dialler.put(frame)

        def closer(side: str) -> Any:
            async def close(code: int) -> None:
                # a closed WebSocket ends both readers
                self.close_codes[side].append(code)
                self.to_acceptor.put_nowait(None)
                self.to_dialler.put_nowait(None)

            return close

        self.dialler = Link(
            peer=ACCEPTOR_URL,
            kind=kind,
            dialler=True,
            peer_generation=2,
            send_key=d2a,
            recv_key=a2d,
            write=write_to_acceptor,
            close=closer("dialler"),
            dispatcher=self.dialler_dispatcher,
            max_buffer=max_buffer,
            stats=self.dialler_stats,
        )
        self.acceptor = Link(
            peer=DIALLER_URL,
            kind=kind,
            dialler=False,
            peer_generation=1,
            send_key=a2d,
            recv_key=d2a,
            write=write_to_dialler,
            close=closer("acceptor"),
            dispatcher=self.acceptor_dispatcher,
            max_buffer=max_buffer,
            stats=self.acceptor_stats,
            # as LinkPool.accept does when the dialler's offer lists the features
            features=LINK_FEATURES if features else frozenset(),
            announce=features,
        )
        self.readers = [
            asyncio.ensure_future(self.dialler.run(self.to_dialler.get)),
            asyncio.ensure_future(self.acceptor.run(self.to_acceptor.get)),
        ]

    async def aclose(self) -> None:
        for link in (self.dialler, self.acceptor):
            await link.shutdown(reason="test over", cancel_handlers=True)
        for task in self.readers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2)

    async def __aenter__(self) -> LinkPair:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- an in-memory network of meshes ------------------------------------------------------------


class _ClientWS:
    """The dialler's end of an in-memory WebSocket (what aiohttp's ws_connect returns)."""

    def __init__(self, to_server: asyncio.Queue[dict[str, Any]]) -> None:
        self.to_server = to_server  # what the acceptor's ASGI receive() reads
        self.inbox: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        self.closed = False

    async def receive(self) -> aiohttp.WSMessage:
        if self.closed and self.inbox.empty():
            return aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None)
        return await self.inbox.get()

    async def send_bytes(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("in-memory WebSocket is closed")
        await self.to_server.put({"type": "websocket.receive", "bytes": data})

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if self.closed:
            return False
        self.closed = True
        await self.to_server.put({"type": "websocket.disconnect", "code": code})
        self.inbox.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None))
        return True


class _Session:
    """Stands in for the pool's aiohttp.ClientSession: ws_connect runs the target's ASGI app."""

    def __init__(self, net: MemoryNet, source: str) -> None:
        self._net = net
        self._source = source
        self.closed = False

    async def close(self) -> None:
        self.closed = True

    async def ws_connect(self, url: str, *, headers: dict[str, str], **_: Any) -> _ClientWS:
        parts = urllib.parse.urlsplit(url)
        node = f"http://{parts.netloc}"
        mesh = self._net.nodes.get(node)
        if mesh is None or node in self._net.down:
            raise aiohttp.ClientConnectionError(f"connection refused: {node}")
        self._net.offers.append(dict(headers))
        to_server: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        ws = _ClientWS(to_server)
        self._net.sockets.append(ws)
        accepted: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "ws",
            "path": parts.path,
            "raw_path": parts.path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
            ],
            "client": ("127.0.0.1", 40000),
            "server": (parts.hostname or "", parts.port or 80),
            "subprotocols": [],
        }

        async def send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "websocket.accept":
                if not accepted.done():
                    accepted.set_result(None)
            elif kind == "websocket.send":
                ws.inbox.put_nowait(
                    aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, message["bytes"], None)
                )
            elif kind == "websocket.close":
                if not accepted.done():
                    accepted.set_result(int(message.get("code", 1000)))
                else:
                    ws.closed = True
                    ws.inbox.put_nowait(
                        aiohttp.WSMessage(aiohttp.WSMsgType.CLOSE, message.get("code", 1000), "")
                    )

        await to_server.put({"type": "websocket.connect"})
        task = asyncio.ensure_future(mesh(scope, to_server.get, send))
        self._net.tasks.add(task)

        def done(_: asyncio.Task[None]) -> None:
            self._net.tasks.discard(task)
            if not accepted.done():
                accepted.set_result(1011)
            ws.inbox.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None))

        task.add_done_callback(done)
        refused = await accepted
        if refused is not None:
            # what uvicorn turns a close before accept into
            info = aiohttp.RequestInfo(URL(url), "GET", CIMultiDictProxy(CIMultiDict()), URL(url))
            raise aiohttp.WSServerHandshakeError(info, (), status=403, message="refused")
        return ws


class MemoryNet:
    """Several meshes that dial each other in memory (see the module docstring)."""

    def __init__(self) -> None:
        self.nodes: dict[str, SioMesh] = {}
        self.down: set[str] = set()  # URLs that refuse connections (the process is gone)
        self.offers: list[dict[str, str]] = []  # every offer's headers, as dialled
        self.tasks: set[asyncio.Task[None]] = set()
        self.sockets: list[_ClientWS] = []  # the diallers' ends of every connection, in order

    def attach(self, mesh: SioMesh) -> SioMesh:
        self.nodes[mesh.config.node_url] = mesh
        session = _Session(self, mesh.config.node_url)
        pool: Any = mesh.node.links
        pool._client = lambda: session  # dial through the in-memory network
        return mesh

    async def aclose(self) -> None:
        for mesh in self.nodes.values():
            await mesh.shutdown()
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2)
