"""Drain on SIGTERM: hand the node's clients to its peers *before* the server stops listening.

uvicorn (and ``siomesh run``'s workers, which are uvicorn servers) close their listening socket
as soon as SIGTERM arrives, and only then run the ASGI lifespan shutdown: too late for a health
check to turn 503, for the node to tell its peers it is leaving, or for a client to be handed
over while its requests can still reach this node. So, at lifespan startup, siomesh wraps the
server's SIGTERM handler: the first SIGTERM starts :meth:`MeshNode.drain
<siomesh.node.MeshNode.drain>` (bounded by ``drain_timeout``) and calls the server's own handler
when it is done; a second SIGTERM calls the server's handler at once.

Only a Python-level handler installed with :func:`signal.signal` (uvicorn's) is wrapped; under a
server that handles signals otherwise, siomesh leaves them alone and drains at lifespan shutdown
instead. Must be called from the main thread, on the server's event loop.

Once drained, the node stops accepting connections (:func:`stop_listening`) a moment before
the server stops, and :func:`bound_server_shutdown` makes sure that stop has a bound.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .node import MeshNode

__all__ = [
    "GRACEFUL_SHUTDOWN",
    "LISTENER_GRACE",
    "bound_server_shutdown",
    "drain_on_sigterm",
    "stop_listening",
    "uvicorn_config",
    "uvicorn_server",
]

log = logging.getLogger("siomesh")

#: Seconds a uvicorn server with no bound of its own waits for requests still in flight when
#: it stops (after the drain), before it cancels them.
GRACEFUL_SHUTDOWN = 5.0

#: Seconds between closing the listening sockets and letting the server stop: long enough for
#: the event loop to read the requests that connections accepted just before carry.
LISTENER_GRACE = 0.2


def uvicorn_config(receive: Any) -> Any:
    """The ``uvicorn.Config`` of the server running this app, found from the lifespan's
    ``receive`` (a bound method of uvicorn's lifespan handler); None under another server."""
    config = getattr(getattr(receive, "__self__", None), "config", None)
    if config is None or not type(config).__module__.startswith("uvicorn"):
        return None
    return config


def uvicorn_server(receive: Any) -> Any:
    """The ``uvicorn.Server`` running this app, found from the lifespan's ``receive`` while the
    lifespan starts up (the server's own task awaits it then, among the event loop's tasks);
    None under another server."""
    config = uvicorn_config(receive)
    if config is None:
        return None
    try:
        import uvicorn
    except ImportError:
        return None
    for task in asyncio.all_tasks():
        awaited: Any = task.get_coro()
        for _ in range(64):
            frame = getattr(awaited, "cr_frame", None)
            if frame is None:
                break
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, uvicorn.Server) and candidate.config is config:
                return candidate
            awaited = getattr(awaited, "cr_await", None)
    return None


async def stop_listening(server: Any, grace: float = LISTENER_GRACE) -> int:
    """Close ``server``'s listening sockets, then wait ``grace`` seconds; returns how many were
    closed. Only the listeners: connections already accepted go on.

    uvicorn's own stop closes its listeners and, in the same step, every connection that has
    no request in progress. A connection the balancer opened a moment before, whose request
    the event loop had not read yet, counts as idle: closing it with unread bytes resets it,
    and the balancer reports a POST it must not resend as failed (nginx: "recv() failed (104:
    Connection reset by peer) while reading response header"). Seen at the end of a drain in
    about 1 in 10 runs of the rolling-restart recovery test: an emit lost, its client back
    unrecovered. With the listeners closed first, a new connection is refused (a balancer
    retries that on another node), and the requests already accepted are read within the
    grace, answered with ``Connection: close`` and not cut. Under several workers sharing one
    socket, only this worker's copy closes; the others go on accepting."""
    listeners = list(getattr(server, "servers", None) or [])
    for listener in listeners:
        listener.close()
    if listeners:
        await asyncio.sleep(grace)
    return len(listeners)


def bound_server_shutdown(receive: Any) -> bool:
    """Bound the stop of the uvicorn server running this node (found from the lifespan's
    ``receive``; nothing happens under another server, or when the server has a bound):
    ``timeout_graceful_shutdown`` becomes :data:`GRACEFUL_SHUTDOWN`. True if it was set.

    ``uvicorn`` without ``--timeout-graceful-shutdown`` (and gunicorn's uvicorn worker) waits
    without end for requests in flight when it stops. After the drain nothing of this node's
    should still be running, but a request that never ends (python-engineio can wait for good
    on a client that sent its CLOSE and vanished) kept a drained node alive until it was
    killed: seen about twice in 60 runs of the rolling-restart recovery test, which stops
    plain ``uvicorn`` nodes with SIGTERM and waits 10 s for each to exit."""
    config = uvicorn_config(receive)
    if config is None or getattr(config, "timeout_graceful_shutdown", 0) is not None:
        return False
    config.timeout_graceful_shutdown = GRACEFUL_SHUTDOWN
    return True


def drain_on_sigterm(node: MeshNode, server: Any = None) -> bool:
    """Wrap the current SIGTERM handler as described above; True if it was wrapped. ``server``
    (a ``uvicorn.Server``, see :func:`uvicorn_server`) stops listening once the drain is done,
    before its own handler runs."""
    if threading.current_thread() is not threading.main_thread():
        return False
    original = signal.getsignal(signal.SIGTERM)
    if not callable(original) or getattr(original, "_siomesh_drain", False):
        return False
    loop = asyncio.get_running_loop()
    task: asyncio.Task[None] | None = None

    async def drain_then_stop(signum: int, frame: FrameType | None) -> None:
        bound = node.config.drain_timeout + 1.0
        try:
            await asyncio.wait_for(node.drain(), bound)
        except asyncio.TimeoutError:
            log.warning("siomesh drain did not end within %.1f s; stopping anyway", bound)
        except Exception:
            log.exception("siomesh drain failed; stopping anyway")
        if server is not None:
            try:
                await stop_listening(server)
            except Exception:
                log.exception("siomesh could not close the listening sockets; stopping anyway")
        assert callable(original)
        original(signum, frame)

    def start(signum: int, frame: FrameType | None) -> None:
        nonlocal task
        if task is None:
            task = loop.create_task(drain_then_stop(signum, frame))

    def handler(signum: int, frame: FrameType | None) -> Any:
        if task is None and not loop.is_closed():
            # a signal handler may run in the middle of the loop's own bookkeeping: hand the
            # work to the loop instead of touching it here
            loop.call_soon_threadsafe(start, signum, frame)
            return None
        assert callable(original)
        return original(signum, frame)  # second SIGTERM: stop now

    handler._siomesh_drain = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, handler)
    return True
