"""The control app (plain python-socketio, no SioMesh); it moved into the package (the bench
serves it): see :mod:`siomesh.benchkit.apps.plain`."""

from siomesh.benchkit.apps.plain import NODE, app, sio

__all__ = ["NODE", "app", "sio"]
