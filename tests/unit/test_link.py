"""Link and Stream (siomesh.links.link): two real links back to back in memory."""

from __future__ import annotations

import asyncio

import pytest

from siomesh.links.frames import (
    FrameType,
    ResponseMeta,
    decode_close,
    decode_meta_body,
    decode_u32,
    encode_batch,
    encode_meta_body,
    encode_u32,
    seal_frame,
)
from siomesh.links.handshake import LINK_FEATURES
from siomesh.links.link import (
    GOING_AWAY,
    PROTOCOL_ERROR,
    Dispatcher,
    LinkClosed,
    Stream,
    StreamInterrupted,
)

from .memlinks import KEY_A2D, KEY_D2A, LinkPair

T = 2.0  # bound of every wait


async def until(condition: object, timeout: float = T) -> None:
    async def poll() -> None:
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)


async def hold(link: object, stream: Stream, payload: bytes) -> None:
    """A stream handler that holds its stream until it ends."""
    await stream.ended.wait()


def recorder(dispatcher: Dispatcher, kind: FrameType) -> list[bytes]:
    seen: list[bytes] = []
    dispatcher.on(kind, lambda link, payload: seen.append(payload))
    return seen


async def exchange_in_order(pair: LinkPair, n: int = 500) -> None:
    """Each side sends ``n`` GOSSIP frames in one event-loop turn; each gets the other's, in
    order, once."""
    to_acceptor = recorder(pair.acceptor_dispatcher, FrameType.GOSSIP)
    to_dialler = recorder(pair.dialler_dispatcher, FrameType.GOSSIP)
    for i in range(n):
        assert pair.dialler.send(FrameType.GOSSIP, 0, b"d%d" % i)
        assert pair.acceptor.send(FrameType.GOSSIP, 0, b"a%d" % i)
    await until(lambda: len(to_acceptor) == n and len(to_dialler) == n)
    assert to_acceptor == [b"d%d" % i for i in range(n)]
    assert to_dialler == [b"a%d" % i for i in range(n)]


async def test_frames_flow_in_order_both_ways() -> None:
    async with LinkPair() as pair:
        await exchange_in_order(pair)
        assert pair.dialler_stats["link_frames_sent"] == 500
        assert pair.acceptor_stats["link_frames_received"] == 500
        assert pair.dialler_stats["link_bytes_sent"] == sum(len(f) for f in pair.wire_to_acceptor)
        assert pair.dialler.is_open and pair.acceptor.is_open


async def test_callbacks_get_the_link() -> None:
    async with LinkPair() as pair:
        seen: list[object] = []
        pair.acceptor_dispatcher.on(FrameType.ADAPTER_ACK, lambda link, _: seen.append(link))
        pair.dialler.send(FrameType.ADAPTER_ACK, 0, b"")
        await until(lambda: seen)
        assert seen == [pair.acceptor]


async def test_a_failing_callback_does_not_close_the_link() -> None:
    async with LinkPair() as pair:
        seen: list[bytes] = []

        def flaky(link: object, payload: bytes) -> None:
            if payload == b"boom":
                raise RuntimeError("bug in a handler")
            seen.append(payload)

        pair.acceptor_dispatcher.on(FrameType.GOSSIP, flaky)
        pair.dialler.send(FrameType.GOSSIP, 0, b"boom")
        pair.dialler.send(FrameType.GOSSIP, 0, b"ok")
        await until(lambda: seen == [b"ok"])
        assert pair.acceptor.is_open


async def test_request_response_over_a_stream() -> None:
    async with LinkPair() as pair:
        served: list[tuple[int, bytes]] = []

        async def handler(link: object, stream: Stream, payload: bytes) -> None:
            served.append((stream.id, payload))
            _, more = await stream.next(T)  # a second frame of the same exchange
            stream.send(FrameType.RESPONSE, payload + b"+" + more)

        pair.acceptor_dispatcher.serve(FrameType.REQUEST, handler)
        streams = [pair.dialler.open_stream() for _ in range(3)]
        assert [s.id for s in streams] == [1, 2, 3]
        for stream in streams:
            assert stream.send(FrameType.REQUEST, b"q%d" % stream.id)
        for stream in reversed(streams):
            assert stream.send(FrameType.WS_DATA, b"more%d" % stream.id)
        for stream in streams:
            assert await stream.next(T) == (
                FrameType.RESPONSE,
                b"q%d+more%d" % (stream.id, stream.id),
            )
            stream.close()
        assert sorted(served) == [(1, b"q1"), (2, b"q2"), (3, b"q3")]
        assert pair.dialler.stream_count() == 0
        await until(lambda: pair.acceptor.stream_count() == 0)  # handlers done: forgotten


async def test_stream_next_times_out() -> None:
    async with LinkPair() as pair:
        pair.acceptor_dispatcher.serve(FrameType.REQUEST, hold)
        stream = pair.dialler.open_stream()
        stream.send(FrameType.REQUEST, b"")
        with pytest.raises(asyncio.TimeoutError):
            await stream.next(0.05)


async def test_cancel_from_the_dialler_ends_the_acceptor_stream() -> None:
    async with LinkPair() as pair:
        started = asyncio.Event()
        ended: list[bool] = []

        async def handler(link: object, stream: Stream, payload: bytes) -> None:
            started.set()
            await stream.ended.wait()
            ended.append(stream.failed)
            with pytest.raises(LinkClosed, match="cancelled"):
                await stream.next(T)

        pair.acceptor_dispatcher.serve(FrameType.REQUEST, handler)
        stream = pair.dialler.open_stream()
        stream.send(FrameType.REQUEST, b"long poll")
        await asyncio.wait_for(started.wait(), T)
        stream.send(FrameType.CANCEL, b"")
        await until(lambda: ended)
        assert ended == [True]
        assert pair.acceptor.is_open and pair.dialler.is_open  # only the stream ended


async def test_opening_frames_from_the_acceptor_are_a_protocol_error() -> None:
    async with LinkPair() as pair:
        pair.dialler_dispatcher.serve(FrameType.REQUEST, hold)
        pair.acceptor.send(FrameType.REQUEST, 1, b"")
        await asyncio.wait_for(pair.dialler.closed.wait(), T)
        assert pair.dialler_stats["link_protocol_errors"] == 1
        assert "accepting end" in pair.dialler.close_reason
        with pytest.raises(RuntimeError):
            pair.acceptor.open_stream()


async def test_unexpected_frames_are_protocol_errors() -> None:
    # a stream-only frame outside any stream
    async with LinkPair() as pair:
        pair.dialler.send(FrameType.WS_DATA, 0, b"\x00x")
        await asyncio.wait_for(pair.acceptor.closed.wait(), T)
        assert pair.acceptor_stats["link_protocol_errors"] == 1
        assert pair.close_codes["acceptor"] == [PROTOCOL_ERROR]
    # a stream opened twice
    async with LinkPair() as pair:
        pair.acceptor_dispatcher.serve(FrameType.REQUEST, hold)
        pair.dialler.send(FrameType.REQUEST, 5, b"")
        pair.dialler.send(FrameType.REQUEST, 5, b"")
        await asyncio.wait_for(pair.acceptor.closed.wait(), T)
        assert "reuses stream 5" in pair.acceptor.close_reason


async def test_known_frames_this_node_does_not_use_are_dropped_not_fatal() -> None:
    """A node without the adapter (another client manager) or without gossip still links with
    nodes that have them: their frames are counted and dropped, a call gets an error reply."""
    async with LinkPair() as pair:
        seen = recorder(pair.acceptor_dispatcher, FrameType.ADAPTER_ACK)
        pair.dialler.send(FrameType.GOSSIP, 0, b"")
        pair.dialler.send(FrameType.ADAPTER, 0, b"")
        stream = pair.dialler.open_stream()
        stream.send(FrameType.CALL, b"{}")
        kind, payload = await stream.next(T)
        assert kind is FrameType.REPLY and payload[:1] == b"\x01"
        pair.dialler.send(FrameType.ADAPTER_ACK, 0, b"still up")
        await until(lambda: seen)
        assert pair.acceptor.is_open
        assert pair.acceptor_stats["link_protocol_errors"] == 0
        assert pair.acceptor_stats["link_frames_unhandled"] == 3


async def test_frames_for_a_forgotten_stream_are_dropped() -> None:
    async with LinkPair() as pair:
        seen = recorder(pair.dialler_dispatcher, FrameType.GOSSIP)
        pair.acceptor.send(FrameType.RESPONSE, 42, b"late answer")
        pair.acceptor.send(FrameType.GOSSIP, 0, b"after")
        await until(lambda: seen)
        assert pair.dialler.is_open and pair.dialler_stats["link_protocol_errors"] == 0


async def test_closing_one_link_fails_pending_streams_on_both_ends() -> None:
    async with LinkPair() as pair:
        acceptor_streams: list[Stream] = []

        async def handler(link: object, stream: Stream, payload: bytes) -> None:
            acceptor_streams.append(stream)
            await stream.ended.wait()

        pair.acceptor_dispatcher.serve(FrameType.REQUEST, handler)
        stream = pair.dialler.open_stream()
        stream.send(FrameType.REQUEST, b"")
        waiting = asyncio.ensure_future(stream.next())
        await until(lambda: acceptor_streams)
        await pair.dialler.shutdown(reason="bye")
        with pytest.raises(LinkClosed, match="bye"):
            await asyncio.wait_for(waiting, T)
        assert stream.failed and stream.ended.is_set()
        # the acceptor reads the end of the connection, closes too, and ends its streams
        await asyncio.wait_for(pair.acceptor.closed.wait(), T)
        await asyncio.wait_for(acceptor_streams[0].ended.wait(), T)
        assert pair.close_codes["dialler"] == [GOING_AWAY]
        # a closed link refuses everything
        assert not pair.dialler.send(FrameType.GOSSIP, 0, b"")
        late = pair.dialler.open_stream()
        assert late.failed
        with pytest.raises(LinkClosed):
            await late.next(T)
        with pytest.raises(LinkClosed):
            await late.send_data(FrameType.WS_DATA, b"x", T)


async def test_shutdown_cancels_handlers_only_when_asked() -> None:
    async with LinkPair() as pair:
        cancelled: list[bool] = []
        started = asyncio.Event()

        async def handler(link: object, stream: Stream, payload: bytes) -> None:
            started.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        pair.acceptor_dispatcher.serve(FrameType.CALL, handler)
        pair.dialler.open_stream().send(FrameType.CALL, b"")
        await asyncio.wait_for(started.wait(), T)
        await pair.acceptor.shutdown(reason="node stopping", cancel_handlers=True)
        await until(lambda: cancelled)


async def test_frame_with_the_wrong_key_closes_the_link() -> None:
    async with LinkPair() as pair:
        seen = recorder(pair.acceptor_dispatcher, FrameType.GOSSIP)
        pair.dialler.send(FrameType.GOSSIP, 0, b"genuine")
        await until(lambda: seen)
        forged = seal_frame(b"not the link key", FrameType.GOSSIP, 0, 2, b"forged")
        await pair.to_acceptor.put(forged)
        await asyncio.wait_for(pair.acceptor.closed.wait(), T)
        assert seen == [b"genuine"]
        assert pair.acceptor_stats["link_protocol_errors"] == 1
        assert pair.close_codes["acceptor"] == [PROTOCOL_ERROR]
        assert "protocol error" in pair.acceptor.close_reason
        await asyncio.wait_for(pair.dialler.closed.wait(), T)


async def test_replayed_frame_closes_the_link() -> None:
    async with LinkPair() as pair:
        seen = recorder(pair.acceptor_dispatcher, FrameType.GOSSIP)
        pair.dialler.send(FrameType.GOSSIP, 0, b"once")
        await until(lambda: seen)
        await pair.to_acceptor.put(pair.wire_to_acceptor[0])  # the same bytes again
        await asyncio.wait_for(pair.acceptor.closed.wait(), T)
        assert seen == [b"once"]
        assert pair.acceptor_stats["link_protocol_errors"] == 1
        assert "sequence" in pair.acceptor.close_reason


async def test_frame_from_the_other_direction_closes_the_link() -> None:
    async with LinkPair() as pair:
        # a frame sealed for dialler -> acceptor, reflected back at the dialler
        await pair.to_dialler.put(seal_frame(KEY_D2A, FrameType.GOSSIP, 0, 1, b"x"))
        await asyncio.wait_for(pair.dialler.closed.wait(), T)
        assert pair.dialler_stats["link_protocol_errors"] == 1


async def test_a_reader_error_closes_the_link() -> None:
    async with LinkPair() as pair:
        # the transport hands the reader something that is not a message (a broken connection)
        await pair.to_acceptor.put(12345)  # type: ignore[arg-type]
        await asyncio.wait_for(pair.acceptor.closed.wait(), T)
        assert "read failed" in pair.acceptor.close_reason


async def test_a_writer_error_closes_the_link() -> None:
    async with LinkPair() as pair:

        async def broken(frame: bytes) -> None:
            raise ConnectionResetError("gone")

        pair.dialler._write = broken
        pair.dialler.send(FrameType.GOSSIP, 0, b"")
        await asyncio.wait_for(pair.dialler.closed.wait(), T)
        assert "write failed" in pair.dialler.close_reason


async def test_send_refuses_beyond_max_buffer() -> None:
    async with LinkPair(max_buffer=100) as pair:
        seen = recorder(pair.acceptor_dispatcher, FrameType.GOSSIP)
        # the writer has not run yet: everything queued here is buffered
        assert pair.dialler.send(FrameType.GOSSIP, 0, b"a" * 60)
        assert pair.dialler.buffered == 60
        assert pair.dialler.send(FrameType.GOSSIP, 0, b"b" * 40)
        assert not pair.dialler.send(FrameType.GOSSIP, 0, b"c")
        assert pair.dialler_stats["link_buffer_full"] == 1
        assert pair.dialler.buffered == 100
        await until(lambda: len(seen) == 2)
        assert pair.dialler.buffered == 0
        # an empty buffer takes one frame of any size
        assert pair.dialler.send(FrameType.GOSSIP, 0, b"d" * 500)
        assert not pair.dialler.send(FrameType.GOSSIP, 0, b"e")
        await until(lambda: len(seen) == 3)
        assert seen == [b"a" * 60, b"b" * 40, b"d" * 500]


async def test_buffer_drains_while_the_writer_is_blocked() -> None:
    async with LinkPair(max_buffer=100) as pair:
        gate = asyncio.Event()
        write = pair.dialler._write

        async def slow(frame: bytes) -> None:
            await gate.wait()
            await write(frame)

        pair.dialler._write = slow
        seen = recorder(pair.acceptor_dispatcher, FrameType.GOSSIP)
        assert pair.dialler.send(FrameType.GOSSIP, 0, b"x" * 80)
        await asyncio.sleep(0.01)  # the writer took it and blocks on the connection
        assert pair.dialler.buffered == 0
        assert pair.dialler.send(FrameType.GOSSIP, 0, b"y" * 80)
        assert not pair.dialler.send(FrameType.GOSSIP, 0, b"z" * 80)
        gate.set()
        await until(lambda: len(seen) == 2)
        assert seen == [b"x" * 80, b"y" * 80]


async def test_websocket_stream_credit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Stream, "WINDOW", 400)
    async with LinkPair() as pair:
        consume = asyncio.Event()
        received: list[bytes] = []
        acceptor: list[Stream] = []

        async def handler(link: object, stream: Stream, payload: bytes) -> None:
            acceptor.append(stream)
            while True:
                _, data = await stream.next()
                received.append(data)
                await consume.wait()
                stream.consumed_bytes(len(data))

        pair.acceptor_dispatcher.serve(FrameType.WS_OPEN, handler)
        stream = pair.dialler.open_stream()
        assert stream.credit == 400
        stream.send(FrameType.WS_OPEN, b"")
        await asyncio.wait_for(stream.send_data(FrameType.WS_DATA, b"a" * 400, T), T)
        assert stream.credit == 0
        # no credit left: the next send waits (and times out if none comes)
        with pytest.raises(asyncio.TimeoutError):
            await stream.send_data(FrameType.WS_DATA, b"b" * 10, 0.05)
        blocked = asyncio.ensure_future(stream.send_data(FrameType.WS_DATA, b"b" * 10, T))
        await asyncio.sleep(0.02)
        assert not blocked.done() and len(received) == 1
        consume.set()  # the receiver consumes 400 bytes: a WINDOW frame gives them back
        await asyncio.wait_for(blocked, T)
        assert stream.credit == 390
        await until(lambda: len(received) == 2)
        windows = [f for f in pair.wire_to_dialler if f[0] == FrameType.WINDOW]
        assert len(windows) == 1
        assert decode_u32(windows[0][13:-16]) == 400
        assert acceptor[0].consumed == 10  # below a quarter window: not acknowledged yet


async def test_credit_is_per_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Stream, "WINDOW", 100)
    async with LinkPair() as pair:
        pair.acceptor_dispatcher.serve(FrameType.WS_OPEN, hold)
        stuck, free = pair.dialler.open_stream(), pair.dialler.open_stream()
        for stream in (stuck, free):
            stream.send(FrameType.WS_OPEN, b"")
        await stuck.send_data(FrameType.WS_DATA, b"x" * 100, T)
        blocked = asyncio.ensure_future(stuck.send_data(FrameType.WS_DATA, b"x", T))
        # the other stream is not held back by the stuck one
        await asyncio.wait_for(free.send_data(FrameType.WS_DATA, b"y" * 50, T), T)
        assert not blocked.done()
        # a WINDOW frame for the stuck stream unblocks it
        pair.acceptor.send(FrameType.WINDOW, stuck.id, encode_u32(100))
        await asyncio.wait_for(blocked, T)


async def test_a_link_closing_wakes_a_sender_waiting_for_credit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Stream, "WINDOW", 10)
    async with LinkPair() as pair:
        pair.acceptor_dispatcher.serve(FrameType.WS_OPEN, hold)
        stream = pair.dialler.open_stream()
        stream.send(FrameType.WS_OPEN, b"")
        await stream.send_data(FrameType.WS_DATA, b"x" * 10, T)
        blocked = asyncio.ensure_future(stream.send_data(FrameType.WS_DATA, b"x", T))
        await asyncio.sleep(0.01)
        await pair.acceptor.shutdown(reason="gone")
        with pytest.raises(LinkClosed):
            await asyncio.wait_for(blocked, T)


def test_dispatcher_serves_only_opening_types() -> None:
    dispatcher = Dispatcher()
    with pytest.raises(ValueError):
        dispatcher.serve(FrameType.GOSSIP, hold)


async def test_info_and_repr() -> None:
    async with LinkPair(kind="control") as pair:
        pair.dialler.open_stream()
        info = pair.dialler.info()
        assert info == {
            "peer": pair.dialler.peer,
            "kind": "control",
            "dialled": True,
            "streams": 1,
            "buffered": 0,
        }
        assert repr(pair.dialler).startswith("<Link control to ")
        assert repr(pair.acceptor).startswith("<Link control from ")


@pytest.mark.parametrize(
    ("opening", "answer"),
    [
        (FrameType.REQUEST, FrameType.RESPONSE),
        (FrameType.CALL, FrameType.REPLY),
        (FrameType.WS_OPEN, FrameType.WS_CLOSE),
    ],
)
@pytest.mark.parametrize("fails", [True, False])
async def test_every_stream_gets_an_answer(
    opening: FrameType, answer: FrameType, fails: bool
) -> None:
    """A handler that raises, or returns without answering, still answers its dialler at once
    (a 500, an error reply, a 1011 close): the dialler never waits for its timeout."""
    async with LinkPair() as pair:

        async def handler(link: object, stream: Stream, payload: bytes) -> None:
            if fails:
                raise RuntimeError("the app failed")

        pair.acceptor_dispatcher.serve(opening, handler)
        stream = pair.dialler.open_stream()
        assert stream.send(opening, encode_meta_body({"m": "GET"}))
        kind, payload = await stream.next(T)
        assert kind is answer
        if answer is FrameType.RESPONSE:
            meta, body = decode_meta_body(payload)
            assert ResponseMeta.from_wire(meta).status == 500
            assert body == b"Internal Server Error"
        elif answer is FrameType.REPLY:
            assert payload[:1] == b"\x01"
        else:
            assert decode_close(payload)[0] == 1011
        assert pair.acceptor.stats.get("link_handler_errors", 0) == (1 if fails else 0)


async def test_batches_carry_queued_frames_in_order_both_ways() -> None:
    async with LinkPair(features=True) as pair:
        # the dialler learns from the acceptor's first frame (FEATURES) that it reads them
        await until(lambda: pair.dialler.batching)
        assert pair.dialler.features == pair.acceptor.features == LINK_FEATURES
        assert pair.dialler.binary_meta
        await exchange_in_order(pair)  # queued in one loop turn: they leave in few messages
        assert pair.dialler_stats["link_frames_sent"] == 500
        assert pair.dialler_stats["link_messages_sent"] == len(pair.wire_to_acceptor)
        assert len(pair.wire_to_acceptor) < 10
        assert pair.acceptor.buffered == 0 and pair.dialler.buffered == 0
        assert pair.dialler.is_open and pair.acceptor.is_open


async def test_streams_work_inside_batches() -> None:
    acceptor_dispatcher = Dispatcher()

    async def echo(link: object, stream: Stream, payload: bytes) -> None:
        stream.send(FrameType.RESPONSE, payload.upper())

    acceptor_dispatcher.serve(FrameType.REQUEST, echo)
    async with LinkPair(features=True, acceptor_dispatcher=acceptor_dispatcher) as pair:
        await until(lambda: pair.dialler.batching)
        streams = [pair.dialler.open_stream() for _ in range(50)]
        for i, stream in enumerate(streams):
            assert stream.send(FrameType.REQUEST, b"req %d" % i)
        answers = [await s.next(T) for s in streams]
        assert answers == [(FrameType.RESPONSE, b"REQ %d" % i) for i in range(50)]
        assert pair.dialler_stats["link_messages_sent"] < 50


async def test_a_link_without_batching_sends_one_frame_per_message() -> None:
    async with LinkPair() as pair:
        seen = recorder(pair.acceptor_dispatcher, FrameType.GOSSIP)
        for i in range(20):
            pair.dialler.send(FrameType.GOSSIP, 0, b"%d" % i)
        await until(lambda: len(seen) == 20)
        assert len(pair.wire_to_acceptor) == 20
        assert not pair.dialler.batching


async def test_an_interrupt_ends_one_wait_after_the_frames_already_there() -> None:
    async with LinkPair() as pair:
        stream = pair.dialler.open_stream()
        stream.push(FrameType.RESPONSE, b"first")
        stream.interrupt("why")
        stream.interrupt("ignored: the first reason wins")
        assert await stream.next(T) == (FrameType.RESPONSE, b"first")
        with pytest.raises(StreamInterrupted) as raised:
            await stream.next(T)
        assert raised.value.args == ("why",)
        # once: the next wait waits again (and times out here)
        with pytest.raises(asyncio.TimeoutError):
            await stream.next(0.05)
        waiting = asyncio.ensure_future(stream.next(T))
        await asyncio.sleep(0.01)
        stream.interrupt("later")
        with pytest.raises(StreamInterrupted):
            await waiting


@pytest.mark.parametrize(
    ("to", "frames"),
    [
        # a batch on a stream
        ("acceptor", [seal_frame(KEY_D2A, FrameType.BATCH, 3, 1, b"")]),
        # a batch inside a batch
        (
            "acceptor",
            [seal_frame(KEY_D2A, FrameType.BATCH, 0, 1, encode_batch([(1, 0, b"")]))],
        ),
        # FEATURES from the dialler, which never sends it
        ("acceptor", [seal_frame(KEY_D2A, FrameType.FEATURES, 0, 1, b"batch")]),
        # FEATURES later than the acceptor's first frame
        (
            "dialler",
            [
                seal_frame(KEY_A2D, FrameType.GOSSIP, 0, 1, b"x"),
                seal_frame(KEY_A2D, FrameType.FEATURES, 0, 2, b"batch"),
            ],
        ),
    ],
    ids=["batch-on-a-stream", "batch-in-a-batch", "features-from-dialler", "features-late"],
)
async def test_misplaced_batch_and_features_frames_are_protocol_errors(
    to: str, frames: list[bytes]
) -> None:
    async with LinkPair() as pair:
        link, queue, stats = (
            (pair.acceptor, pair.to_acceptor, pair.acceptor_stats)
            if to == "acceptor"
            else (pair.dialler, pair.to_dialler, pair.dialler_stats)
        )
        for frame in frames:
            await queue.put(frame)
        await until(lambda: not link.is_open)
        assert pair.close_codes[to] == [PROTOCOL_ERROR]
        assert stats["link_protocol_errors"] == 1
        assert not link.batching


async def test_a_dialler_keeps_only_the_features_it_knows() -> None:
    async with LinkPair() as pair:
        await pair.to_dialler.put(
            seal_frame(KEY_A2D, FrameType.FEATURES, 0, 1, b"batch,warp-drive")
        )
        await until(lambda: pair.dialler.batching)
        assert pair.dialler.features == {"batch"}
        assert not pair.dialler.binary_meta
