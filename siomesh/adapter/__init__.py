"""The broker-less python-socketio client manager: emits, rooms, acks and cluster-wide calls
relayed peer to peer over the mesh's links. See docs/adapter.md.

Public names: :func:`install_adapter`, :class:`MeshManager`, :class:`PartialResult`,
:class:`RemoteSocket`, :class:`LinkSettings`.
"""

from __future__ import annotations

from .channel import LinkSettings
from .manager import MeshManager, PartialResult, RemoteSocket, install_adapter

__all__ = ["LinkSettings", "MeshManager", "PartialResult", "RemoteSocket", "install_adapter"]
