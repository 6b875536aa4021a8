"""PeerClient: signed POSTs from this node to a peer's ``{mesh_path}/{endpoint}``.

Shares the forwarder's keep-alive pool. Every call is bounded by ``timeout`` seconds. Raises
:class:`PeerError` for any failure (unreachable, timeout, non-200 answer); never anything else
from the network. Use from the node's event loop only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp

from ..auth import PeerSigner

__all__ = ["PeerClient", "PeerError"]


class PeerError(Exception):
    """A peer request failed; ``status`` is the HTTP status when the peer answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PeerClient:
    def __init__(
        self,
        *,
        node_url: str,
        mesh_path: str,
        signer: PeerSigner,
        session: Callable[[], aiohttp.ClientSession],
        connect_timeout: float,
    ) -> None:
        self._node_url = node_url
        self._mesh_path = mesh_path
        self._signer = signer
        self._session = session
        self._connect_timeout = connect_timeout

    async def post(self, peer_url: str, endpoint: str, body: bytes, *, timeout: float) -> bytes:
        """POST ``body`` to ``peer_url``'s endpoint, signed; return the answer's body."""
        path = f"{self._mesh_path}/{endpoint}"
        headers = self._signer.sign(
            method="POST",
            path=path,
            query="",
            node_url=self._node_url,
            now=time.time(),
            body=body,
        )
        headers["Content-Type"] = "application/octet-stream"
        client_timeout = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(self._connect_timeout, timeout)
        )
        for attempt in (1, 2):
            try:
                async with self._session().post(
                    peer_url + path, data=body, headers=headers, timeout=client_timeout
                ) as response:
                    payload = await response.read()
                    if response.status != 200:
                        raise PeerError(
                            f"{peer_url}{path}: HTTP {response.status}: {payload[:200]!r}",
                            response.status,
                        )
                    return payload
            except aiohttp.ServerDisconnectedError as exc:
                # a pooled socket closed under us: not processed, one retry is safe
                if attempt == 2:
                    raise PeerError(f"{peer_url}{path}: {exc!r}") from exc
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                raise PeerError(f"{peer_url}{path}: {exc!r}") from exc
        raise PeerError(f"{peer_url}{path}: unreachable")  # pragma: no cover
