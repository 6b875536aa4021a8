"""Link: one authenticated, multiplexed connection to a peer, after its handshake.

Contract:

* :meth:`Link.send` never blocks: it queues a frame for the link's single writer task and
  returns False (nothing queued) when the link is closed or its outbound buffer already holds
  ``max_buffer`` bytes. Frames leave in the order they were queued; the writer numbers and seals
  them (:func:`~siomesh.links.frames.seal_frame`) as it writes, so the numbering is the wire
  order. When several frames are queued by the time the writer runs (under load: everything
  queued in one event-loop turn), and the peer reads batches (``batching``), they leave as one
  ``BATCH`` message, up to ``BATCH_BYTES``: one MAC, one WebSocket message and one wake-up of
  the peer's reader for all of them. Order and contents are the same either way.
* The reader (:meth:`Link.run`) verifies every frame (MAC, sequence); any failure closes the
  link with a protocol error (WebSocket code 1002) and counts it. Frames of a stream go to that
  stream; frames that open a stream (request, WebSocket open, call: only the dialler may send
  them) start a handler task; other frames go to the per-type callbacks of the
  :class:`Dispatcher`. Callbacks run on the reader's task: they must not block.
* When a link closes, every stream on it fails (:class:`LinkClosed`, ``Stream.ended``); the
  handlers it started see that and finish on their own (a forwarded long-poll returns without
  taking packets, see :mod:`siomesh.orphans`), they are cancelled only when the node stops.
* :class:`Stream` delivers its frames in order; WebSocket streams use credit (``WINDOW``
  frames, HTTP/2 style) so that a slow reader holds back only its own stream.

Everything runs on one event loop; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..counters import Stats
from .frames import (
    FrameError,
    FrameType,
    ResponseMeta,
    decode_batch,
    decode_u32,
    encode_batch,
    encode_close,
    encode_meta_body,
    encode_u32,
    open_frame,
    seal_frame,
)
from .handshake import FEATURE_BATCH, FEATURE_BINARY_META, parse_features

__all__ = ["Dispatcher", "EndSignal", "Link", "LinkClosed", "Stream", "StreamInterrupted"]

log = logging.getLogger("siomesh.links")

Reader = Callable[[], Awaitable[bytes | None]]
Writer = Callable[[bytes], Awaitable[None]]
Closer = Callable[[int], Awaitable[None]]
FrameCallback = Callable[["Link", bytes], None]
StreamHandler = Callable[["Link", "Stream", bytes], Awaitable[None]]

#: Frame types that open a stream on the acceptor.
OPENING = frozenset({FrameType.REQUEST, FrameType.WS_OPEN, FrameType.CALL})
#: Frame types that only make sense inside a stream.
_STREAM_ONLY = frozenset(
    {
        FrameType.RESPONSE,
        FrameType.CANCEL,
        FrameType.WS_ACCEPT,
        FrameType.WS_DATA,
        FrameType.WS_CLOSE,
        FrameType.WINDOW,
        FrameType.REPLY,
    }
)
#: At most this many payload bytes go in one ``BATCH`` message (a larger frame goes alone).
BATCH_BYTES = 256 * 1024
#: Close codes (RFC 6455): protocol error, going away.
PROTOCOL_ERROR = 1002
GOING_AWAY = 1001
#: Frame types that end a stream on the acceptor: its answer.
_ANSWERS = frozenset({FrameType.RESPONSE, FrameType.REPLY, FrameType.WS_CLOSE})
#: What uvicorn answers when an ASGI app raises before responding; a forwarded request gets the
#: same answer its owner would have given it directly.
_INTERNAL_ERROR = encode_meta_body(
    ResponseMeta(
        status=500,
        headers=[(b"content-type", b"text/plain; charset=utf-8")],
    ).to_wire(),
    b"Internal Server Error",
)


def fallback_answer(opened_by: FrameType) -> tuple[FrameType, bytes]:
    """The answer a stream opened by ``opened_by`` gets when its handler ended without one
    (it raised, or returned without answering): a 500 to a forwarded request, an error reply to
    a call, a close (1011) to a relayed WebSocket. Without it the dialler would wait for its
    timeout and count the owner as lost."""
    if opened_by is FrameType.REQUEST:
        return FrameType.RESPONSE, _INTERNAL_ERROR
    if opened_by is FrameType.CALL:
        return FrameType.REPLY, b"\x01internal error"
    return FrameType.WS_CLOSE, encode_close(1011, "internal error")


class LinkClosed(Exception):
    """The link closed before the exchange finished; whether the peer acted on it is unknown."""


class StreamReleased(LinkClosed):
    """The dialler asked the acceptor to end the exchange now (a ``CANCEL`` frame with payload
    :data:`RELEASE`) and still reads the answer: unlike a plain cancel, an answer sent
    afterwards is not lost."""


class StreamInterrupted(Exception):
    """:meth:`Stream.next` was interrupted (:meth:`Stream.interrupt`); ``args[0]`` says why."""


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


#: ``CANCEL`` payload: end the exchange now, the answer is still read (see StreamReleased).
RELEASE = b"release"


class Dispatcher:
    """Who handles which frame type: callbacks for stream-less frames, handlers for streams."""

    def __init__(self) -> None:
        self.callbacks: dict[FrameType, FrameCallback] = {}
        self.handlers: dict[FrameType, StreamHandler] = {}

    def on(self, kind: FrameType, callback: FrameCallback) -> None:
        """Call ``callback(link, payload)`` for every frame of ``kind`` (stream 0)."""
        self.callbacks[kind] = callback

    def serve(self, kind: FrameType, handler: StreamHandler) -> None:
        """Run ``handler(link, stream, payload)`` as a task for every stream opened by ``kind``."""
        if kind not in OPENING:
            raise ValueError(f"{kind!r} does not open streams")
        self.handlers[kind] = handler


class EndSignal:
    """Fires once, when its stream fails; callbacks run synchronously in :meth:`fire` (they must
    not block). A waiter registers a callback instead of parking a task on an
    :class:`asyncio.Event`: a forwarded long-poll waits on one of these, and a task per wait
    is a measurable share of a forward (see :mod:`siomesh.orphans`)."""

    __slots__ = ("_callbacks", "_fired")

    def __init__(self, fired: bool = False) -> None:
        self._fired = fired
        self._callbacks: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self._fired

    def fire(self) -> None:
        if self._fired:
            return
        self._fired = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the signal fires (at once if it has fired)."""
        if self._fired:
            callback()
        else:
            self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)


class Stream:
    """One exchange on a link (see the module docstring). Created by :meth:`Link.open_stream`
    on the dialler and by the link itself on the acceptor."""

    __slots__ = (
        "_credit_event",
        "_end_signal",
        "_ended",
        "_error",
        "_interrupt",
        "_items",
        "_waiter",
        "answered",
        "consumed",
        "credit",
        "id",
        "link",
    )

    #: initial credit of each direction of a WebSocket stream, bytes
    WINDOW = 1 << 20

    def __init__(self, link: Link, stream_id: int) -> None:
        self.link = link
        self.id = stream_id
        self._items: deque[tuple[FrameType, bytes]] = deque()
        # the future next() awaits (no Event, no Task: a forwarded request pays for each)
        self._waiter: asyncio.Future[None] | None = None
        self._interrupt: object = None
        self._error: BaseException | None = None
        # Made on first use: most streams are one request and one answer, which need neither
        # (every forwarded request pays for what is built here).
        self._ended: asyncio.Event | None = None
        self._end_signal: EndSignal | None = None
        self._credit_event: asyncio.Event | None = None
        self.credit = Stream.WINDOW  # bytes we may still send
        self.consumed = 0  # bytes received and consumed, not yet acknowledged by WINDOW
        #: whether this end sent the stream's answer (a RESPONSE, REPLY or WS_CLOSE frame)
        self.answered = False

    @property
    def ended(self) -> asyncio.Event:
        """Set when the stream fails: its link closed, or (acceptor side) the dialler
        cancelled."""
        if self._ended is None:
            self._ended = asyncio.Event()
            if self._error is not None:
                self._ended.set()
        return self._ended

    @property
    def end_signal(self) -> EndSignal:
        """Fires when the stream fails (as :attr:`ended` is set), for waiters that would
        rather not park a task."""
        if self._end_signal is None:
            self._end_signal = EndSignal(fired=self._error is not None)
        return self._end_signal

    def push(self, kind: FrameType, payload: bytes) -> None:
        if kind is FrameType.WINDOW:
            self.credit += decode_u32(payload)
            if self._credit_event is not None:
                self._credit_event.set()
            return
        self._items.append((kind, payload))
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def interrupt(self, reason: object) -> None:
        """Make a pending (or the next) :meth:`next` that has no frame to give raise
        :class:`StreamInterrupted` with ``reason``, once (until it raises, the first reason
        given wins); frames already here are still given first."""
        if self._interrupt is None:
            self._interrupt = reason
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        if self._ended is not None:
            self._ended.set()
        if self._end_signal is not None:
            self._end_signal.fire()
        self._wake()
        if self._credit_event is not None:
            self._credit_event.set()

    @property
    def failed(self) -> bool:
        return self._error is not None

    @property
    def released(self) -> bool:
        """The dialler ended the exchange with a release and still reads the answer."""
        return isinstance(self._error, StreamReleased)

    async def next(self, timeout: float | None = None) -> tuple[FrameType, bytes]:
        """The next frame of this stream, in order. Raises :class:`LinkClosed` when the link
        closed first, :class:`StreamInterrupted` after :meth:`interrupt`,
        :class:`asyncio.TimeoutError` after ``timeout`` seconds. One reader at a time."""
        if self._items:
            return self._items.popleft()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._items:
            if self._error is not None:
                raise LinkClosed(str(self._error))
            if self._interrupt is not None:
                reason, self._interrupt = self._interrupt, None
                raise StreamInterrupted(reason)
            waiter = self._waiter = loop.create_future()
            timer = None if deadline is None else loop.call_at(deadline, _expire, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        return self._items.popleft()

    def send(self, kind: FrameType, payload: bytes) -> bool:
        if kind in _ANSWERS:
            self.answered = True
        return self.link.send(kind, self.id, payload)

    async def send_data(self, kind: FrameType, payload: bytes, timeout: float) -> None:
        """Send a flow-controlled frame: wait (up to ``timeout``) for the peer's credit first.
        Raises :class:`LinkClosed` or :class:`asyncio.TimeoutError`."""
        while self.credit <= 0:
            if self._error is not None:
                raise LinkClosed(str(self._error))
            if self._credit_event is None:
                self._credit_event = asyncio.Event()
            self._credit_event.clear()
            await asyncio.wait_for(self._credit_event.wait(), timeout)
        if self._error is not None:
            raise LinkClosed(str(self._error))
        self.credit -= len(payload)
        if not self.link.send(kind, self.id, payload):
            raise LinkClosed("link closed or its buffer is full")

    def consumed_bytes(self, size: int) -> None:
        """Tell the peer we consumed ``size`` bytes (sent as credit in batches of a quarter
        window, so a busy stream costs one WINDOW frame per 256 KiB)."""
        self.consumed += size
        if self.consumed >= Stream.WINDOW // 4:
            self.link.send(FrameType.WINDOW, self.id, encode_u32(self.consumed))
            self.consumed = 0

    def close(self) -> None:
        """Forget this stream on its link (frames that arrive for it later are ignored)."""
        self.link.streams.pop(self.id, None)


class Link:
    """See the module docstring. ``dialler`` says which end of the connection this is."""

    def __init__(
        self,
        *,
        peer: str,
        kind: str,
        dialler: bool,
        peer_generation: int,
        send_key: bytes,
        recv_key: bytes,
        write: Writer,
        close: Closer,
        dispatcher: Dispatcher,
        max_buffer: int,
        stats: Stats,
        features: frozenset[str] = frozenset(),
        announce: bool = False,
    ) -> None:
        self.peer = peer
        self.kind = kind
        self.dialler = dialler
        self.peer_generation = peer_generation
        self._send_key = send_key
        self._recv_key = recv_key
        self._write = write
        self._close = close
        self._dispatcher = dispatcher
        self.max_buffer = max_buffer
        self.stats = stats
        self.streams: dict[int, Stream] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._out: deque[tuple[int, int, bytes]] = deque()
        self._buffered = 0
        self._wake = asyncio.Event()
        self._send_seq = 0
        self._recv_seq = 0
        self._next_stream = 1
        self.closed = asyncio.Event()
        self.close_reason = ""
        #: ``time.monotonic()`` when the link last received a message (or opened)
        self.heard_at = time.monotonic()
        #: what this link's two ends both read beyond single JSON-meta frames
        #: (:data:`~siomesh.links.handshake.LINK_FEATURES`): the acceptor knows it from the
        #: dialler's offer, and says so in its first frame (``FEATURES``; ``announce``), from
        #: which the dialler learns it
        self._set_features(features)
        self._announce = announce
        self._writer = asyncio.ensure_future(self._write_loop())

    def _set_features(self, features: frozenset[str]) -> None:
        # plain attributes, not properties: the writer reads one per message, a forward the other
        self.features = features
        self.batching = FEATURE_BATCH in features
        self.binary_meta = FEATURE_BINARY_META in features

    def __repr__(self) -> str:
        side = "to" if self.dialler else "from"
        return f"<Link {self.kind} {side} {self.peer}>"

    @property
    def is_open(self) -> bool:
        return not self.closed.is_set()

    @property
    def buffered(self) -> int:
        return self._buffered

    # -- sending --------------------------------------------------------------------------------

    def send(self, kind: FrameType, stream: int, payload: bytes) -> bool:
        """Queue one frame (see the module docstring); False if not queued."""
        if self.closed.is_set():
            return False
        if self._buffered + len(payload) > self.max_buffer and self._buffered:
            self.stats.bump("link_buffer_full")
            return False
        self._out.append((int(kind), stream, payload))
        self._buffered += len(payload)
        self._wake.set()
        return True

    def open_stream(self) -> Stream:
        """A new stream id on this link (dialler only)."""
        if not self.dialler:
            raise RuntimeError("only the dialling end opens streams")
        stream = Stream(self, self._next_stream)
        self._next_stream += 1
        if self.closed.is_set():
            stream.fail(LinkClosed(self.close_reason or "link closed"))
        self.streams[stream.id] = stream
        return stream

    async def _write_loop(self) -> None:
        out = self._out
        try:
            if self._announce:
                # the acceptor's first frame: the features both ends have
                names = ",".join(sorted(self.features)).encode("ascii")
                await self._seal_and_write(FrameType.FEATURES, 0, names, 0)
            while True:
                while not out:
                    self._wake.clear()
                    await self._wake.wait()
                kind, stream, payload = out.popleft()
                self._buffered -= len(payload)
                if not out or not self.batching:
                    await self._seal_and_write(kind, stream, payload, 1)
                    continue
                frames = [(kind, stream, payload)]
                size = len(payload)
                while out and size + len(out[0][2]) <= BATCH_BYTES:
                    frame = out.popleft()
                    frames.append(frame)
                    size += len(frame[2])
                    self._buffered -= len(frame[2])
                if len(frames) == 1:  # the next one would not fit
                    await self._seal_and_write(kind, stream, payload, 1)
                    continue
                await self._seal_and_write(FrameType.BATCH, 0, encode_batch(frames), len(frames))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.shutdown(GOING_AWAY, f"write failed: {exc!r}")

    async def _seal_and_write(self, kind: int, stream: int, payload: bytes, count: int) -> None:
        self._send_seq += 1
        frame = seal_frame(self._send_key, kind, stream, self._send_seq, payload)
        await self._write(frame)
        self.stats.bump("link_frames_sent", count)
        self.stats.bump("link_messages_sent")
        self.stats.bump("link_bytes_sent", len(frame))

    # -- receiving ------------------------------------------------------------------------------

    async def run(self, read: Reader) -> None:
        """Read and dispatch frames until the connection ends; then close the link."""
        reason = "connection closed"
        code = GOING_AWAY
        try:
            while True:
                try:
                    data = await read()
                except FrameError as exc:  # e.g. a text message where frames are binary
                    self.stats.bump("link_protocol_errors")
                    log.warning("link %s: protocol error, closing: %s", self, exc)
                    reason, code = f"protocol error: {exc}", PROTOCOL_ERROR
                    break
                if data is None:
                    break
                self.heard_at = time.monotonic()
                self.stats.bump("link_frames_received")
                self.stats.bump("link_bytes_received", len(data))
                try:
                    self._receive(data)
                except FrameError as exc:
                    self.stats.bump("link_protocol_errors")
                    log.warning("link %s: protocol error, closing: %s", self, exc)
                    reason, code = f"protocol error: {exc}", PROTOCOL_ERROR
                    break
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        except Exception as exc:
            reason = f"read failed: {exc!r}"
        finally:
            await self.shutdown(code, reason)

    def _receive(self, data: bytes) -> None:
        kind, stream_id, payload = open_frame(self._recv_key, data, self._recv_seq + 1)
        self._recv_seq += 1
        if kind is FrameType.FEATURES:
            if not self.dialler or stream_id != 0 or self._recv_seq != 1:
                raise FrameError("FEATURES frame other than the acceptor's first")
            self._set_features(parse_features(payload.decode("ascii", "replace")))
            return
        if kind is FrameType.BATCH:
            if stream_id != 0:
                raise FrameError("BATCH frame on a stream")
            for inner_kind, inner_stream, inner_payload in decode_batch(payload):
                self._dispatch(inner_kind, inner_stream, inner_payload)
            return
        self._dispatch(kind, stream_id, payload)

    def _dispatch(self, kind: FrameType, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            callback = self._dispatcher.callbacks.get(kind)
            if callback is None:
                if kind in OPENING or kind in _STREAM_ONLY:
                    raise FrameError(f"{kind.name} frame without a stream")
                # a known kind this node does not use (e.g. adapter messages to a node that
                # keeps another client manager): dropped and counted, the link stays up
                self.stats.bump("link_frames_unhandled")
                return
            try:
                callback(self, payload)
            except FrameError:
                raise
            except Exception:
                log.exception("link %s: %s frame handler failed", self, kind.name)
            return
        if kind in OPENING:
            if self.dialler:
                raise FrameError(f"{kind.name} from the accepting end")
            handler = self._dispatcher.handlers.get(kind)
            if stream_id in self.streams:
                raise FrameError(f"{kind.name} reuses stream {stream_id}")
            if handler is None:
                self.stats.bump("link_frames_unhandled")
                if kind is FrameType.CALL:
                    self.send(FrameType.REPLY, stream_id, b"\x01no handler for calls here")
                elif kind is FrameType.WS_OPEN:
                    self.send(FrameType.WS_CLOSE, stream_id, encode_close(1011, "not served"))
                return
            stream = Stream(self, stream_id)
            self.streams[stream_id] = stream
            task = asyncio.ensure_future(self._serve(handler, kind, stream, payload))
            self._tasks[stream_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(stream_id, None))
            return
        if kind is FrameType.CANCEL:
            # the forwarder's client left: the request is orphaned (its handler sees
            # ``stream.ended``; see siomesh.orphans)
            cancelled = self.streams.get(stream_id) if not self.dialler else None
            if cancelled is not None:
                if payload == RELEASE:
                    cancelled.fail(StreamReleased("released by the forwarding node"))
                else:
                    cancelled.fail(LinkClosed("cancelled by the forwarding node"))
            return
        existing = self.streams.get(stream_id)
        if existing is not None:
            existing.push(kind, payload)
        # else: the exchange ended on this side already (timed out, cancelled): drop it

    async def _serve(
        self, handler: StreamHandler, opened_by: FrameType, stream: Stream, payload: bytes
    ) -> None:
        """Run one stream's handler. Every stream gets an answer: when the handler raised or
        returned without one, :func:`fallback_answer` is sent at once (unless the stream
        failed first: then nobody reads it)."""
        try:
            await handler(self, stream, payload)
        except FrameError as exc:
            self.stats.bump("link_protocol_errors")
            log.warning("link %s: bad stream %d: %s", self, stream.id, exc)
        except (LinkClosed, asyncio.CancelledError):
            pass
        except Exception:
            self.stats.bump("link_handler_errors")
            log.exception("link %s: %s stream %d handler failed", self, opened_by.name, stream.id)
        finally:
            if not stream.answered and (not stream.failed or stream.released):
                kind, answer = fallback_answer(opened_by)
                stream.send(kind, answer)
            stream.close()

    # -- closing --------------------------------------------------------------------------------

    async def shutdown(
        self, code: int = GOING_AWAY, reason: str = "closed", *, cancel_handlers: bool = False
    ) -> None:
        """Close the link: fail its streams (and cancel their handler tasks if asked), close
        the connection."""
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        error = LinkClosed(f"link {self} closed: {reason}")
        for stream in list(self.streams.values()):
            stream.fail(error)
        self.streams.clear()
        if cancel_handlers:
            for task in list(self._tasks.values()):
                task.cancel()
        self._out.clear()
        self._buffered = 0
        current = asyncio.current_task()
        if self._writer is not current:
            self._writer.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._close(code), 1.0)
        log.debug("link %s closed: %s", self, reason)

    def stream_count(self) -> int:
        return len(self.streams)

    def info(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "kind": self.kind,
            "dialled": self.dialler,
            "streams": len(self.streams),
            "buffered": self._buffered,
        }
