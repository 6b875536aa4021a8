"""The python-socketio / python-engineio versions siomesh supports, checked at startup.

siomesh reaches into both libraries (the client manager, the server's packet and connect
hooks, Engine.IO sockets and their disconnect reasons), so an older release fails deep inside
a request, or at construction with an ``AttributeError``. :func:`check_versions` (called by
:func:`siomesh.discovery.find_engine`, so by ``SioMesh(...)`` and ``siomesh run``) turns that
into one error at startup that names the versions and the fix.

``SUPPORTED`` is the floor: the same as ``pyproject.toml``'s dependencies, and what
``scripts/test-floor`` pins and tests (python-socketio 5.12 is the first with disconnect
reasons, which needs python-engineio 4.11).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from importlib import metadata

__all__ = ["SUPPORTED", "UnsupportedVersionError", "check_versions", "installed_version"]

#: distribution name -> the oldest supported (major, minor)
SUPPORTED: Mapping[str, tuple[int, int]] = {
    "python-socketio": (5, 12),
    "python-engineio": (4, 11),
}

_LEADING = re.compile(r"\d+(?:\.\d+)*")


class UnsupportedVersionError(RuntimeError):
    """An installed python-socketio or python-engineio is older than siomesh supports; the
    message names the installed and required versions and the pip command to fix it."""


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed as a
    distribution (vendored, or run from a source tree)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...] | None:
    """``"5.12.0rc1"`` -> ``(5, 12, 0)``; None when the version does not start with numbers."""
    match = _LEADING.match(version.strip().lstrip("vV"))
    if match is None:
        return None
    return tuple(int(part) for part in match.group().split("."))


def _floor(minimum: tuple[int, int]) -> str:
    return ".".join(str(part) for part in minimum)


def check_versions(version_of: Callable[[str], str | None] = installed_version) -> None:
    """Raise :class:`UnsupportedVersionError` when an installed python-socketio or
    python-engineio is older than :data:`SUPPORTED`. A library that is not installed as a
    distribution, or whose version cannot be read, is not judged."""
    too_old: list[tuple[str, str]] = []
    for distribution, minimum in SUPPORTED.items():
        version = version_of(distribution)
        if version is None:
            continue
        release = _release(version)
        if release is not None and release < minimum:
            too_old.append((distribution, version))
    if not too_old:
        return
    installed = " and ".join(f"{name} {version}" for name, version in too_old)
    required = " and ".join(f"{name}>={_floor(minimum)}" for name, minimum in SUPPORTED.items())
    command = " ".join(f"'{name}>={_floor(SUPPORTED[name])}'" for name, _ in too_old)
    verb = "is" if len(too_old) == 1 else "are"
    raise UnsupportedVersionError(
        f"{installed} {verb} installed, but siomesh needs {required}: "
        f"upgrade with pip install --upgrade {command}"
    )
