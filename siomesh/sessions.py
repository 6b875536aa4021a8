"""Ending an Engine.IO session so that its client *reconnects*.

``engineio.AsyncServer.disconnect(sid)`` sends the client a CLOSE packet; python-engineio's
client then reports a *server* disconnect, after which python-socketio's client does not
reconnect (by design: the server meant it). When siomesh has to end a session because the
client may have missed messages (an adapter gap, a poll answered into the void) or because the
node is draining, the client must come back at once, resync, and land elsewhere. So the session
is aborted the way a network failure would end it: no CLOSE packet; a pending poll is woken
with no packets and the next one gets ``400 Invalid session``; a WebSocket is closed without a
goodbye. Every Engine.IO client (python-socketio's, the JS client) treats that as a transport
error and reconnects with its usual back-off. The server still runs its ``disconnect`` handler.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["drop_session"]


async def drop_session(eio: Any, sid: str) -> bool:
    """Abort Engine.IO session ``sid`` of server ``eio`` as described above; False if it was
    not open here. Runs on the server's event loop; does not wait for the client."""
    socket = eio.sockets.get(sid)
    if socket is None or socket.closed or socket.closing:
        return False
    await socket.close(wait=False, abort=True, reason=eio.reason.TRANSPORT_ERROR)
    # wake a pending long-poll (it answers no packets) or the WebSocket writer (it closes)
    with contextlib.suppress(Exception):
        socket.queue.put_nowait(None)
    eio.sockets.pop(sid, None)
    return True
