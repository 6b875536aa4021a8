"""While a node drains, every HTTP answer carries ``Connection: close``
(siomesh.middleware._closing_send), also the answer of a request that began before the drain
(a long-poll released at its end): a balancer must not keep that connection, since the node
stops listening soon and a POST sent on it would be lost."""

from __future__ import annotations

import asyncio
from typing import Any

from siomesh.middleware import _closing_send


async def test_an_answer_started_after_the_drain_began_closes_its_connection() -> None:
    draining = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    quick = _closing_send(send, draining)  # answered before the drain: kept alive
    await quick({"type": "http.response.start", "status": 200, "headers": []})
    long_poll = _closing_send(send, draining)  # arrived before the drain began
    draining.set()
    await long_poll({"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]})
    await long_poll({"type": "http.response.body", "body": b"6"})
    assert sent[0]["headers"] == []
    assert sent[1]["headers"] == [(b"a", b"1"), (b"connection", b"close")]
    assert sent[2] == {"type": "http.response.body", "body": b"6"}
