"""The test app every integration test runs; it moved into the package (the bench serves it):
see :mod:`siomesh.benchkit.apps.echo`."""

from siomesh.benchkit.apps.echo import NODE, app, sio

__all__ = ["NODE", "app", "sio"]
