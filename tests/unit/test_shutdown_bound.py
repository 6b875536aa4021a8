"""A node bounds its server's stop (siomesh.drain.bound_server_shutdown): uvicorn without
``--timeout-graceful-shutdown`` waits without end for requests in flight, and a request that
never ends kept a drained node alive until it was killed."""

from __future__ import annotations

from typing import Any

import uvicorn

from siomesh.drain import GRACEFUL_SHUTDOWN, bound_server_shutdown


class Lifespan:
    """Stands for uvicorn's lifespan handler: its ``receive`` is a bound method and the
    handler carries the server's config (what siomesh finds from the lifespan's receive)."""

    def __init__(self, config: Any) -> None:
        self.config = config

    async def receive(self) -> dict[str, Any]:
        return {"type": "lifespan.startup"}


async def app(scope: Any, receive: Any, send: Any) -> None:
    return None


def test_a_server_without_a_bound_gets_one_and_a_bound_set_by_the_user_is_kept() -> None:
    unbounded = uvicorn.Config(app)
    assert unbounded.timeout_graceful_shutdown is None
    assert bound_server_shutdown(Lifespan(unbounded).receive)
    assert unbounded.timeout_graceful_shutdown == GRACEFUL_SHUTDOWN
    chosen = uvicorn.Config(app, timeout_graceful_shutdown=30)
    assert not bound_server_shutdown(Lifespan(chosen).receive)
    assert chosen.timeout_graceful_shutdown == 30


def test_another_server_is_left_alone() -> None:
    class OtherConfig:
        timeout_graceful_shutdown = None

    other = OtherConfig()
    assert not bound_server_shutdown(Lifespan(other).receive)
    assert other.timeout_graceful_shutdown is None

    async def plain_receive() -> dict[str, Any]:
        return {}

    assert not bound_server_shutdown(plain_receive)
