"""Free TCP ports on the loopback interface: see :mod:`siomesh.benchkit.ports`."""

from siomesh.benchkit.ports import LOOPBACK, free_port, free_ports

__all__ = ["LOOPBACK", "free_port", "free_ports"]
