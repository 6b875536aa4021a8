"""The narrow interface the node's parts see of the node (no part imports the middleware).

:class:`NodeContext` is what :class:`~siomesh.runtime.gossip.GossipRuntime` and
:class:`~siomesh.adapter.MeshManager` are given: the node's configuration, identity, counters,
links and cluster view, and its lifecycle hooks. :class:`siomesh.node.MeshNode` implements it;
tests may pass any object with these attributes. Everything is used from the node's event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .cluster import ClusterView
from .config import MeshConfig
from .counters import Stats
from .engine import EngineSeam
from .links.pool import LinkPool
from .sid import SidKeys

__all__ = ["Hook", "NodeContext"]

Hook = Callable[[], Awaitable[None]]


class NodeContext(Protocol):
    @property
    def config(self) -> MeshConfig: ...

    @property
    def generation(self) -> int:
        """This process's generation (later starts get larger numbers)."""
        ...

    @property
    def keys(self) -> SidKeys: ...

    @property
    def stats(self) -> Stats:
        """The node's counters (siomesh.counters; status and metrics read them)."""
        ...

    @property
    def links(self) -> LinkPool: ...

    @property
    def cluster(self) -> ClusterView: ...

    @property
    def seam(self) -> EngineSeam:
        """The one place the libraries are touched (:mod:`siomesh.engine`)."""
        ...

    @property
    def server(self) -> Any:
        """The python-socketio server (``None`` for a bare python-engineio app)."""
        ...

    def on_startup(self, hook: Hook) -> None: ...

    def on_shutdown(self, hook: Hook) -> None: ...
