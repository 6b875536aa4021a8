"""What a process costs, read from Linux's ``/proc``: CPU time, resident memory and TCP
connections.

Nothing here needs psutil or privileges beyond reading one's own processes. On a system
without ``/proc`` every function answers ``None`` (unknown) rather than a wrong zero.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TcpConn",
    "connections_to",
    "cpu_seconds",
    "established",
    "rss_bytes",
    "socket_inodes",
]

_PROC = Path("/proc")
_ESTABLISHED = "01"


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (``VmRSS`` in ``/proc/PID/status``), or None if unknown."""
    try:
        text = (_PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) * 1024
    return None


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) process ``pid`` has used, from /proc; None when it is gone or
    there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after "pid (comm)": state is field 3, utime and stime are fields 14 and 15 (1-based)
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def socket_inodes(pid: int) -> set[int] | None:
    """Inodes of the sockets that ``pid`` holds open, or None if its fds cannot be read."""
    fd_dir = _PROC / str(pid) / "fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return None
    inodes: set[int] = set()
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and target.endswith("]"):
            inodes.add(int(target[8:-1]))
    return inodes


@dataclass(frozen=True)
class TcpConn:
    """One established TCP connection as the kernel lists it."""

    local: tuple[str, int]
    remote: tuple[str, int]
    inode: int


def _address(field: str) -> tuple[str, int]:
    host_hex, port_hex = field.split(":")
    raw = bytes.fromhex(host_hex)
    # /proc/net/tcp{,6} prints each 32-bit word of the address in host (little-endian) order.
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(swapped)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port_hex, 16)


def established() -> Iterator[TcpConn]:
    """Every established TCP connection of this network namespace (IPv4 and IPv6)."""
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _ESTABLISHED:
                continue
            yield TcpConn(_address(fields[1]), _address(fields[2]), int(fields[9]))


def connections_to(
    pids: Iterable[int], ports: Collection[int], *, host: str = "127.0.0.1"
) -> int | None:
    """How many established connections the processes ``pids`` opened to ``host``:``ports``
    (counted at the connecting end: a connection between two of ``pids`` counts once).
    None when a process's sockets cannot be read."""
    inodes: set[int] = set()
    for pid in pids:
        found = socket_inodes(pid)
        if found is None:
            return None
        inodes |= found
    if not _PROC.joinpath("net", "tcp").exists():
        return None
    return sum(
        1
        for c in established()
        if c.inode in inodes and c.remote[0] == host and c.remote[1] in ports
    )
