"""The lean forwarding client against a real local HTTP server (uvicorn is overkill here:
a tiny asyncio server shows every case, including a peer closing a pooled connection)."""

from __future__ import annotations

import asyncio

import pytest

from siomesh.http1 import Http1Error, Http1Pool

HEAD = b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n"


async def serve(handler: object) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
    return server, server.sockets[0].getsockname()[1]


async def test_keep_alive_reuse_and_chunked() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            )
            await writer.drain()

    server, port = await serve(handler)
    pool = Http1Pool(connect_timeout=1.0)
    for _ in range(3):
        response = await pool.request("127.0.0.1", port, HEAD, b"", timeout=2)
        assert (response.status, response.body) == (200, b"abcde")
        assert (b"x-a", b"1") in response.headers
    assert connections == 1
    pool.close()
    server.close()


async def test_pooled_connection_closed_by_peer_is_replaced() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # keep-alive promised, then closed: the next reuse finds it dead

    server, port = await serve(handler)
    pool = Http1Pool(connect_timeout=1.0)
    for _ in range(3):
        response = await pool.request("127.0.0.1", port, HEAD, b"", timeout=2)
        assert response.body == b"ok"
    pool.close()
    server.close()


async def test_refused_and_silent_peers_are_bounded_errors() -> None:
    pool = Http1Pool(connect_timeout=0.5)
    server, port = await serve(lambda r, w: None)
    server.close()
    await server.wait_closed()
    with pytest.raises(Http1Error) as refused:
        await pool.request("127.0.0.1", port, HEAD, b"", timeout=2)
    assert not refused.value.sent

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    server, port = await serve(silent)
    with pytest.raises(Http1Error, match="no answer"):
        await pool.request("127.0.0.1", port, HEAD, b"", timeout=0.3)
    pool.close()
    server.close()
