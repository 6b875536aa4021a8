"""A loopback TCP relay for fault injection (the toxiproxy idea, in a few dozen lines of asyncio).

:class:`Relay` listens on a free 127.0.0.1 port and forwards every connection, byte for byte, to
a target port (several targets: one per connection, in turn: a round-robin balancer that knows
nothing of HTTP). It runs its own event loop in a daemon thread, so blocking test code (process
starts, ``urllib`` calls) never stalls it, and every method may be called from any thread.

What a test can do to the traffic:

* :meth:`cut`: abort every open connection at once (both sides see a reset); new connections
  are accepted again right away unless :meth:`refuse` says otherwise;
* :meth:`hold`: stop forwarding one direction (``"up"``: client to target, ``"down"``: target
  to client) while the other keeps flowing; held bytes are delivered when released, dropped
  when cut;
* :meth:`records`: every chunk that went through, in order, as ``(connection id, direction,
  bytes)`` (recording can be switched off; the relay never parses what it carries);
* :meth:`replay`: send recorded (or any) bytes to a target on a new connection of its own and
  return what came back; :meth:`inject`: write bytes into a live connection.

Loopback only, bounded waits everywhere; :meth:`stop` closes everything (use it as a context
manager, or call :meth:`stop` in ``finally``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .ports import LOOPBACK

__all__ = ["Relay"]

T = TypeVar("T")
DIRECTIONS = ("up", "down")
_CHUNK = 65536
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass
class _Connection:
    id: int
    target: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def writer(self, direction: str) -> asyncio.StreamWriter:
        return self.upstream if direction == "up" else self.client

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                sock = writer.get_extra_info("socket")
                if sock is not None:  # a reset, not a polite close
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            with contextlib.suppress(Exception):
                writer.transport.abort()


class Relay:
    """See the module docstring. ``targets``: one port or several (round-robin)."""

    def __init__(self, targets: int | Sequence[int], *, record: bool = True) -> None:
        self.targets = [targets] if isinstance(targets, int) else list(targets)
        if not self.targets:
            raise ValueError("a relay needs at least one target port")
        self.recording = record
        self.port = 0
        self.accepted = 0
        self._records: list[tuple[int, str, bytes]] = []
        self._connections: dict[int, _Connection] = {}
        self._next_target = 0
        self._refusing = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._gates: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> Relay:
        self._thread.start()
        self._call(self._start(), timeout)
        return self

    async def _start(self) -> None:
        self._gates = {d: asyncio.Event() for d in DIRECTIONS}
        for gate in self._gates.values():
            gate.set()
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop(self, timeout: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop(), timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    # -- faults ----------------------------------------------------------------------------------

    def cut(self) -> int:
        """Abort every open connection; return how many there were."""
        return self._call(self._cut(), 5.0)

    async def _cut(self) -> int:
        connections = list(self._connections.values())
        self._connections.clear()
        for connection in connections:
            connection.abort()
        for connection in connections:
            for task in connection.tasks:
                task.cancel()
        return len(connections)

    def hold(self, direction: str, held: bool = True) -> None:
        """Stop (``held``) or resume forwarding ``direction`` on every connection."""
        if direction not in DIRECTIONS:
            raise ValueError(direction)

        def apply() -> None:
            gate = self._gates[direction]
            if held:
                gate.clear()
            else:
                gate.set()

        self._loop.call_soon_threadsafe(apply)

    def refuse(self, refusing: bool = True) -> None:
        """While ``refusing``, new connections are reset as soon as they are accepted."""
        self._refusing = refusing

    def open_connections(self) -> int:
        return len(self._connections)

    # -- records and replay ----------------------------------------------------------------------

    def records(self) -> list[tuple[int, str, bytes]]:
        """A copy of every recorded chunk so far: ``(connection id, direction, data)``."""
        return list(self._records)

    def stream(self, connection: int, direction: str) -> bytes:
        """Every recorded byte of one direction of one connection."""
        return b"".join(d for c, s, d in self._records if c == connection and s == direction)

    def clear(self) -> None:
        self._records.clear()

    def inject(self, connection: int, direction: str, data: bytes) -> bool:
        """Write ``data`` into a live connection, as if ``direction``'s sender had sent it;
        False when that connection is gone."""

        async def write() -> bool:
            live = self._connections.get(connection)
            if live is None:
                return False
            writer = live.writer(direction)
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(writer.drain(), 2.0)
            return True

        return self._call(write(), 5.0)

    def replay(self, port: int, data: bytes, *, timeout: float = 3.0) -> bytes:
        """Open a new connection to ``port``, send ``data``, and return every byte that comes
        back until the other side closes or ``timeout`` seconds pass (whichever is first)."""

        async def run() -> bytes:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, port), timeout
            )
            received = bytearray()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            try:
                writer.write(data)
                with contextlib.suppress(ConnectionError):
                    await asyncio.wait_for(writer.drain(), timeout)
                while (left := deadline - loop.time()) > 0:
                    try:
                        chunk = await asyncio.wait_for(reader.read(_CHUNK), left)
                    except (asyncio.TimeoutError, ConnectionError):
                        break
                    if not chunk:
                        break
                    received += chunk
            finally:
                writer.transport.abort()
            return bytes(received)

        return self._call(run(), timeout + 5.0)

    # -- relaying --------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._relay(reader, writer)
        except asyncio.CancelledError:
            # stopping: asyncio's stream server logs a cancelled connection task as an error
            writer.transport.abort()
        finally:
            self._tasks.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.transport.abort()
            return
        target = self.targets[self._next_target % len(self.targets)]
        self._next_target += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, target), 5.0
            )
        except (OSError, asyncio.TimeoutError):
            writer.transport.abort()
            return
        self.accepted += 1
        connection = _Connection(self.accepted, target, writer, up_writer)
        self._connections[connection.id] = connection
        connection.tasks = [
            asyncio.ensure_future(self._pump(connection, "up", reader, up_writer)),
            asyncio.ensure_future(self._pump(connection, "down", up_reader, writer)),
        ]
        self._tasks.update(connection.tasks)
        for pump in connection.tasks:
            pump.add_done_callback(self._tasks.discard)
        try:
            await asyncio.gather(*connection.tasks, return_exceptions=True)
        finally:
            self._connections.pop(connection.id, None)
            connection.abort()

    async def _pump(
        self,
        connection: _Connection,
        direction: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        gate = self._gates[direction]
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if self.recording:
                    self._records.append((connection.id, direction, data))
                if not gate.is_set():
                    await gate.wait()
                if connection.id not in self._connections:
                    return  # cut while held: the bytes are lost, as on a real cut
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            connection.abort()
            return
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
