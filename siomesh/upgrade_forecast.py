"""Which new sessions will upgrade to a WebSocket: learned per client kind.

A new session's Socket.IO packets are held for up to ``takeover.window`` (see
:mod:`siomesh.takeover`) so that a client that sends its CONNECT by polling *and* probes a
WebSocket (the JS client does both at once) can still be taken over where its WebSocket lands.
A client that will never upgrade (``transports=["polling"]``, a network that blocks WebSockets)
would wait the whole window on every connect for nothing.

What the first requests reveal: clients of one kind (one ``User-Agent``: a browser build, the
npm client, python-socketio's client) behave alike. So the owner remembers, per kind, whether
its recent sessions that sent their first packet by polling went on to upgrade (taken over, or
upgraded here), and holds a new session only when its kind may upgrade: unknown kinds, kinds
with fewer than ``evidence`` outcomes, and kinds with any upgrade among their last ``memory``
outcomes are held as before. A wrong guess (a session not held whose WebSocket then lands on
another node) costs one relayed WebSocket and is recorded, so that kind is held again.

One kind is known before any evidence: python-engineio's own clients (python-socketio's
``AsyncClient`` and ``Client``, with aiohttp's and requests' default ``User-Agent``) either
upgrade before they send anything or never upgrade at all; so a session of theirs whose first
packet comes by polling is polling-only, and is not held from its first connect (on a fresh
node, a storm of them would otherwise all wait the window). An upgrade recorded for the kind
(a client that sets that same ``User-Agent`` and behaves otherwise) puts it back on hold.

Bounded: at most ``kinds`` kinds (least recently seen forgotten first), ``memory`` outcomes
each; the ``User-Agent`` is cut to 200 characters. A client can only mislead the forecast for
clients that send the same ``User-Agent``, and only into holding (the default) or, by never
upgrading, into not holding sessions that do not upgrade either.

Pure: no I/O, no clock. Not thread-safe (the node's event loop only).
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque

__all__ = ["UpgradeForecast"]

_AGENT_CHARS = 200
#: python-engineio's clients' default User-Agents (aiohttp's, for the asyncio client;
#: requests', for the threaded one): they upgrade before sending anything, or never
_POLLS_ONLY_WHEN_IT_POLLS = re.compile(r"Python/\d[\d.]* aiohttp/|python-requests/")


class UpgradeForecast:
    """See the module docstring."""

    def __init__(self, *, kinds: int = 256, memory: int = 16, evidence: int = 8) -> None:
        if not 0 < evidence <= memory:
            raise ValueError("evidence must be between 1 and memory")
        self._kinds = kinds
        self._memory = memory
        self._evidence = evidence
        self._seen: OrderedDict[str, deque[bool]] = OrderedDict()

    @staticmethod
    def _key(agent: str | None) -> str:
        return (agent or "")[:_AGENT_CHARS]

    def may_upgrade(self, agent: str | None) -> bool:
        """Whether a new session of this kind may still upgrade (hold it)."""
        key = self._key(agent)
        outcomes = self._seen.get(key)
        if outcomes is not None and any(outcomes):
            return True
        if _POLLS_ONLY_WHEN_IT_POLLS.match(key):
            return False
        return outcomes is None or len(outcomes) < self._evidence

    def record(self, agent: str | None, upgraded: bool) -> None:
        """One session of this kind that sent its first packet by polling: did it upgrade?"""
        key = self._key(agent)
        outcomes = self._seen.get(key)
        if outcomes is None:
            if len(self._seen) >= self._kinds:
                self._seen.popitem(last=False)
            outcomes = self._seen[key] = deque(maxlen=self._memory)
        else:
            self._seen.move_to_end(key)
        outcomes.append(upgraded)

    def __len__(self) -> int:
        return len(self._seen)
