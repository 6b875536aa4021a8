"""Find the python-socketio / python-engineio server inside a wrapped ASGI app.

Supported shapes: ``socketio.ASGIApp`` / ``engineio.ASGIApp`` (possibly wrapping
``other_asgi_app``), and Starlette or FastAPI apps (or ``Router``) that mount one with ``Mount``,
searched recursively through routes and common middleware wrappers (any object with an ``app``
attribute). Pass ``server=`` explicitly when the app is shaped otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .versions import check_versions

__all__ = ["DiscoveryError", "EngineTarget", "find_engine"]

_MAX_DEPTH = 16


class DiscoveryError(LookupError):
    """No (or more than one) python-engineio server was found in the wrapped app."""


@dataclass(frozen=True, slots=True)
class EngineTarget:
    """The Engine.IO server to route for and the URL path prefixes it serves."""

    #: the ``engineio.AsyncServer`` (sockets live in ``.sockets``)
    eio: Any
    #: the ``socketio.AsyncServer`` around it, or ``None`` for bare Engine.IO
    sio: Any
    #: path prefixes with a trailing slash, e.g. ``("/socket.io/",)``; empty means "every path"
    prefixes: tuple[str, ...]


def _engine_of(server: Any) -> tuple[Any, Any]:
    """(eio, sio) for a socketio.AsyncServer or an engineio.AsyncServer."""
    eio = getattr(server, "eio", None)
    if eio is not None and hasattr(eio, "sockets"):
        return eio, server
    if hasattr(server, "sockets") and hasattr(server, "generate_id"):
        return server, None
    raise DiscoveryError(
        f"{type(server).__name__} is not a python-socketio or python-engineio server"
    )


def _ensure_slash(path: str) -> str:
    return path if path.endswith("/") else path + "/"


def _search(app: Any, prefix: str, depth: int, found: list[tuple[Any, str | None]]) -> None:
    if app is None or depth > _MAX_DEPTH:
        return
    engine_server = getattr(app, "engineio_server", None)
    if engine_server is not None and hasattr(app, "engineio_path"):
        path = app.engineio_path
        if path is None:
            found.append((engine_server, None))
        else:
            # Starlette keeps the full path in a mounted app's scope, so depending on the
            # version the server matches either the bare or the prefixed path: route both.
            found.append((engine_server, prefix.rstrip("/") + path))
            found.append((engine_server, path))
        _search(getattr(app, "other_asgi_app", None), prefix, depth + 1, found)
        return
    routes = getattr(app, "routes", None)
    if isinstance(routes, list):
        for route in routes:
            inner = getattr(route, "app", None)
            path = getattr(route, "path", None)
            if inner is not None and isinstance(path, str) and type(route).__name__ == "Mount":
                _search(inner, prefix.rstrip("/") + path, depth + 1, found)
    for attr in ("app", "router", "middleware_stack"):
        inner = getattr(app, attr, None)
        if inner is not None and inner is not app:
            _search(inner, prefix, depth + 1, found)


def find_engine(app: Any, server: Any = None, engineio_path: str | None = None) -> EngineTarget:
    """Locate the server. ``server`` (a socketio or engineio AsyncServer) skips the search for
    the server; the path is still searched for, else ``engineio_path`` or ``/socket.io/``.
    An unsupported python-socketio / python-engineio raises
    :class:`~siomesh.versions.UnsupportedVersionError` first."""
    check_versions()
    found: list[tuple[Any, str | None]] = []
    _search(app, "", 0, found)
    if server is not None:
        eio, sio = _engine_of(server)
        paths = [p for s, p in found if s is server or s is eio]
    else:
        servers = {id(s): s for s, _ in found}
        if not servers:
            raise DiscoveryError(
                "no python-socketio server found in the wrapped app: wrap a socketio.ASGIApp, "
                "or a Starlette/FastAPI app that mounts one, or pass server=sio"
            )
        if len(servers) > 1:
            raise DiscoveryError("several Engine.IO servers found: pass server=... to choose")
        (only,) = servers.values()
        eio, sio = _engine_of(only)
        paths = [p for _, p in found]
    if engineio_path is not None:
        paths = [engineio_path]
    if not paths:
        paths = ["/socket.io/"]
    if any(p is None for p in paths):
        return EngineTarget(eio=eio, sio=sio, prefixes=())
    prefixes = tuple(dict.fromkeys(_ensure_slash(p) for p in paths if p is not None))
    return EngineTarget(eio=eio, sio=sio, prefixes=prefixes)
