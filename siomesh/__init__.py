"""siomesh: run several python-socketio servers behind any load balancer, without sticky
sessions and without a message broker.

Public names: :class:`SioMesh` (the ASGI middleware), :class:`MeshConfig`, :class:`ConfigError`,
:class:`DiscoveryError`.
"""

from __future__ import annotations

from .config import ConfigError, MeshConfig
from .discovery import DiscoveryError
from .middleware import SioMesh

__all__ = ["ConfigError", "DiscoveryError", "MeshConfig", "SioMesh"]
__version__ = "0.1.0"
