"""Typed calls over links (siomesh.links.calls) between meshes in memory: one operation name,
one answer per call (ok, refused, unknown operation, a handler that fails), and the node's
own operations served by their parts."""

from __future__ import annotations

import asyncio

import pytest

from siomesh.links.calls import CallFailed, CallRefused, decode_call, encode_call
from siomesh.links.link import Link

from .memlinks import MemoryNet
from .test_link_pool import A, B, T, net, node

__all__ = ["net"]


async def test_a_call_is_answered_by_its_operations_handler(net: MemoryNet) -> None:
    a, b = net.attach(node(A)), net.attach(node(B))
    seen: list[tuple[str, bytes]] = []

    async def echo(link: Link, body: bytes) -> bytes:
        seen.append((link.peer, body))
        return body[::-1]

    b.links.calls.serve("test.echo", echo)
    assert await a.links.calls.call(B, "test.echo", b"abc", timeout=T) == b"cba"
    assert seen == [(A, b"abc")]  # the link says who calls


async def test_refusals_unknown_operations_and_failures_answer_at_once(net: MemoryNet) -> None:
    a, b = net.attach(node(A)), net.attach(node(B))

    async def refuse(link: Link, body: bytes) -> bytes:
        raise CallRefused("not today")

    async def fail(link: Link, body: bytes) -> bytes:
        raise RuntimeError("bug")

    b.links.calls.serve("test.refuse", refuse)
    b.links.calls.serve("test.fail", fail)
    with pytest.raises(CallFailed, match="not today"):
        await a.links.calls.call(B, "test.refuse", timeout=T)
    with pytest.raises(CallFailed, match=r"no 'test\.missing' here"):
        await a.links.calls.call(B, "test.missing", timeout=T)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(CallFailed):
        await a.links.calls.call(B, "test.fail", timeout=T)
    assert loop.time() - began < T / 2  # answered by the link's fallback, not a timeout


async def test_the_nodes_own_operations_are_served(net: MemoryNet) -> None:
    b = net.attach(node(B))
    for op in ("session.takeover", "recovery.fetch", "recovery.adopt", "node.drain"):
        assert b.links.calls.serves(op), op
    with pytest.raises(ValueError):
        b.links.calls.serve("node.drain", _nothing)


async def _nothing(link: Link, body: bytes) -> bytes:
    return b""


def test_the_call_format() -> None:
    assert decode_call(encode_call("op.x", b"{}")) == ("op.x", b"{}")
    for bad in (b"", b"\x05ab", b"\x02\xff\xfe"):
        with pytest.raises(CallRefused):
            decode_call(bad)
    for name in ("", "x" * 256, "é"):
        with pytest.raises(ValueError):
            encode_call(name, b"")
