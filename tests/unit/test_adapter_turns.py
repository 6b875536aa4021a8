"""Turns (siomesh/adapter/turns.py): a node's own deliveries wait for the peer messages it
received before them, and run in the order they joined."""

from __future__ import annotations

import asyncio

from siomesh.adapter.turns import Turns


async def test_nothing_received_unapplied_means_no_wait() -> None:
    turns = Turns()
    assert turns.join() is None
    turns.received = 3
    turns.applied = 3
    assert turns.join() is None


async def test_a_turn_waits_for_what_was_received_before_it_only() -> None:
    turns = Turns()
    turns.received = 2
    turn = turns.join()
    assert turn is not None and turn.mark == 2
    turns.received = 5  # received after the join: not waited for
    turns.advance()
    assert not turn.released.done()
    turns.advance()
    assert turn.released.done()
    assert await turns.wait(turn, 0.01)
    turns.leave(turn)
    assert len(turns) == 0


async def test_turns_run_in_join_order_even_when_a_later_mark_is_met() -> None:
    turns = Turns()
    turns.received = 1
    ran: list[str] = []

    async def deliver(name: str) -> None:
        turn = turns.join()
        if turn is not None:
            try:
                assert await turns.wait(turn, 1.0)
                ran.append(name)
            finally:
                turns.leave(turn)
        else:
            ran.append(name)

    first = asyncio.ensure_future(deliver("first"))
    await asyncio.sleep(0)
    turns.advance()  # first is released but has not run yet
    second = asyncio.ensure_future(deliver("second"))  # joins behind it, mark met
    await asyncio.gather(first, second)
    assert ran == ["first", "second"]


async def test_a_wait_is_bounded_and_flush_releases_everyone() -> None:
    turns = Turns()
    turns.received = 1
    a = turns.join()
    b = turns.join()
    assert a is not None and b is not None
    assert not await turns.wait(a, 0.01)  # the caller goes ahead, and says so
    assert not b.released.done()
    turns.flush()
    assert a.released.done() and b.released.done()
    turns.leave(b)
    turns.leave(a)
    assert len(turns) == 0 and turns.join() is None


async def test_after_a_timeout_nobody_waits_until_the_apply_queue_moves_on() -> None:
    turns = Turns()
    turns.received = 2
    stuck = turns.join()
    assert stuck is not None and not await turns.wait(stuck, 0.01)
    turns.leave(stuck)
    assert turns.join() is None  # the apply queue is still where it hung: no second wait
    turns.advance()
    later = turns.join()  # it moved: waits again (one message is still unapplied)
    assert later is not None and not later.released.done()
    turns.advance()
    assert later.released.done()
