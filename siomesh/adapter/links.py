"""PeerLink: one bounded, ordered outbound queue per peer, drained by one sender task.

Contract:

* :meth:`PeerLink.enqueue` never blocks and never raises: a full queue refuses the message (it
  is counted and logged, once per burst), so a slow or dead peer cannot stall the emitter.
* Messages leave in enqueue order, in batches (one POST each, up to ``max_batch`` messages or
  ``max_batch_bytes``), one batch in flight at a time, so the receiver sees increasing sequence
  numbers and can deduplicate retries with a single watermark per sender.
* A failed POST is retried with exponential backoff while the peer is a live member, at most
  ``retries`` attempts; then the batch is dropped and the link is *failing*: later batches get
  a single attempt each until one succeeds. A peer that is no longer a live member has its whole
  queue dropped with a logged count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from ..runtime.peers import PeerError
from .wire import encode_batch

__all__ = ["LinkSettings", "PeerLink"]

log = logging.getLogger("siomesh.adapter")

Sender = Callable[[str, bytes], Awaitable[bytes]]


class LinkSettings:
    """Tunables shared by every link of a manager (documented in docs/adapter.md)."""

    __slots__ = (
        "backoff",
        "max_backoff",
        "max_batch",
        "max_batch_bytes",
        "max_queue",
        "retries",
    )

    def __init__(
        self,
        *,
        max_queue: int = 10_000,
        max_batch: int = 500,
        max_batch_bytes: int = 1 << 20,
        retries: int = 5,
        backoff: float = 0.05,
        max_backoff: float = 1.0,
    ) -> None:
        if max_queue < 1 or max_batch < 1 or max_batch_bytes < 1 or retries < 1:
            raise ValueError("queue, batch and retry limits must be positive")
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff


class PeerLink:
    """The ordered channel from this node to ``peer``."""

    def __init__(
        self,
        peer: str,
        *,
        epoch: int,
        send: Sender,
        is_alive: Callable[[str], bool],
        settings: LinkSettings,
    ) -> None:
        self.peer = peer
        self._epoch = epoch
        self._send = send
        self._is_alive = is_alive
        self._settings = settings
        self._queue: deque[tuple[int, str]] = deque()
        self._seq = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._refusing = False
        self.stats = {"sent": 0, "batches": 0, "retries": 0, "dropped": 0, "refused": 0}

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def enqueue(self, text: str) -> bool:
        """Queue one encoded message; False (and counted) if the queue is full."""
        if len(self._queue) >= self._settings.max_queue:
            self.stats["refused"] += 1
            if not self._refusing:
                self._refusing = True
                log.warning("adapter queue to %s is full: refusing messages", self.peer)
            return False
        if self._refusing:
            self._refusing = False
            log.warning(
                "adapter queue to %s accepts again (%d refused so far)",
                self.peer,
                self.stats["refused"],
            )
        self._seq += 1
        self._queue.append((self._seq, text))
        self._idle.clear()
        self._wake.set()
        return True

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(self._run(), name=f"siomesh-link-{self.peer}")

    async def stop(self, flush_timeout: float) -> int:
        """Try to send what is queued within ``flush_timeout`` s, then stop; return the number
        of messages dropped."""
        if self.running and self._queue and flush_timeout > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), flush_timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        dropped = len(self._queue)
        if dropped:
            self._drop(dropped, "adapter stopping")
        return dropped

    def _drop(self, count: int, why: str) -> None:
        for _ in range(count):
            self._queue.popleft()
        self.stats["dropped"] += count
        log.warning("dropped %d adapter messages to %s: %s", count, self.peer, why)

    def _take_batch(self) -> list[tuple[int, str]]:
        limit = self._settings.max_batch
        budget = self._settings.max_batch_bytes
        batch: list[tuple[int, str]] = []
        size = 0
        for item in self._queue:
            if batch and (len(batch) >= limit or size + len(item[1]) > budget):
                break
            batch.append(item)
            size += len(item[1]) + 16
        return batch

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._is_alive(self.peer):
                self._drop(len(self._queue), "peer is no longer a live member")
                continue
            batch = self._take_batch()
            delivered = await self._deliver(encode_batch(self._epoch, batch))
            # The batch is still at the head: enqueue only appends, and only this task pops.
            if delivered:
                for _ in batch:
                    self._queue.popleft()
                self.stats["sent"] += len(batch)
                self.stats["batches"] += 1
            elif self._queue:
                self._drop(min(len(batch), len(self._queue)), "peer unreachable")

    async def _deliver(self, body: bytes) -> bool:
        attempts = 1 if self._failing else self._settings.retries
        for attempt in range(attempts):
            try:
                await self._send(self.peer, body)
            except PeerError as exc:
                if exc.status is not None and exc.status < 500:
                    # 4xx: the peer understood and refused (bad batch, bad signature or clock):
                    # sending the same bytes again cannot help.
                    log.error("peer %s refused an adapter batch: %s", self.peer, exc)
                    return False
                if not self._is_alive(self.peer) or attempt + 1 == attempts:
                    log.info("adapter batch to %s failed: %s", self.peer, exc)
                    break
                self.stats["retries"] += 1
                delay = min(self._settings.backoff * (2**attempt), self._settings.max_backoff)
                await asyncio.sleep(delay)
            else:
                self._failing = False
                return True
        self._failing = True
        return False
