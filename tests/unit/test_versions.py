"""siomesh.versions: the supported python-socketio / python-engineio floor, checked at startup."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest
import socketio

import siomesh.versions as versions
from siomesh import SioMesh
from siomesh.discovery import find_engine
from siomesh.versions import SUPPORTED, UnsupportedVersionError, check_versions

ROOT = Path(__file__).resolve().parents[2]
SIO_FLOOR = ".".join(map(str, SUPPORTED["python-socketio"]))
EIO_FLOOR = ".".join(map(str, SUPPORTED["python-engineio"]))


def installed(sio: str | None, eio: str | None) -> Callable[[str], str | None]:
    return {"python-socketio": sio, "python-engineio": eio}.__getitem__


def test_the_floor_is_pyprojects() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    for distribution, minimum in SUPPORTED.items():
        floor = ".".join(map(str, minimum))
        assert re.search(rf'"{distribution}>={re.escape(floor)}"', text), (distribution, floor)


def test_the_running_libraries_pass() -> None:
    check_versions()
    for distribution in SUPPORTED:
        assert versions.installed_version(distribution) is not None


@pytest.mark.parametrize(
    ("sio", "eio"),
    [
        (f"{SIO_FLOOR}.0", f"{EIO_FLOOR}.0"),
        ("5.18.1", "4.15.1"),
        ("6.0.0", "5.0.0"),
        (f"{SIO_FLOOR}.0rc1", f"{EIO_FLOOR}.1.dev3"),  # pre-releases of the floor itself
        ("git+abc", None),  # unreadable or absent: not judged
        (None, None),
    ],
)
def test_supported_or_unknown_versions_pass(sio: str | None, eio: str | None) -> None:
    check_versions(installed(sio=sio, eio=eio))


def test_an_old_socketio_is_named_with_the_fix() -> None:
    with pytest.raises(UnsupportedVersionError) as info:
        check_versions(installed(sio="5.11.4", eio="4.15.1"))
    message = str(info.value)
    assert message.startswith("python-socketio 5.11.4 is installed, but siomesh needs ")
    assert f"python-socketio>={SIO_FLOOR} and python-engineio>={EIO_FLOOR}" in message
    assert message.endswith(f"pip install --upgrade 'python-socketio>={SIO_FLOOR}'")
    assert "4.15.1" not in message


def test_both_old_are_named_together() -> None:
    with pytest.raises(UnsupportedVersionError) as info:
        check_versions(installed(sio="5.11.0", eio="4.9.0"))
    message = str(info.value)
    assert message.startswith("python-socketio 5.11.0 and python-engineio 4.9.0 are installed")
    assert message.endswith(
        f"pip install --upgrade 'python-socketio>={SIO_FLOOR}' 'python-engineio>={EIO_FLOOR}'"
    )
    assert isinstance(info.value, RuntimeError)


def test_an_old_engineio_alone_is_refused() -> None:
    with pytest.raises(UnsupportedVersionError, match=r"^python-engineio 4\.10\.1 is installed"):
        check_versions(installed(sio="5.18.1", eio="4.10.1"))


def test_siomesh_fails_at_construction_with_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.version

    def version(distribution: str) -> str:
        return "5.11.0" if distribution == "python-socketio" else real(distribution)

    monkeypatch.setattr(metadata, "version", version)
    sio = socketio.AsyncServer(async_mode="asgi")
    app = socketio.ASGIApp(sio)
    with pytest.raises(UnsupportedVersionError, match=r"python-socketio 5\.11\.0 is installed"):
        find_engine(app)
    with pytest.raises(UnsupportedVersionError, match="pip install --upgrade"):
        SioMesh(
            app, node_url="http://127.0.0.1:9100", secret="versions-unit-secret-0123456789", env={}
        )
