"""The rendezvous: how the workers of one machine find each other with no configuration.

Every worker that serves a public port (``uvicorn --workers N``, gunicorn's uvicorn workers)
writes one small JSON file into a directory named after that port, and reads the others'::

    $XDG_RUNTIME_DIR/siomesh/8000/        (else /tmp/siomesh-<uid>/8000/, or SIOMESH_RUNTIME_DIR)
        4711-41233.json    {"v": 1, "url": "http://127.0.0.1:41233", "pid": 4711, ...}
        4712-39871.json

A file is named ``<pid>-<private port>.json``, written whole (a hidden temporary file renamed
into place: readers never see half of one), readable by its owner only. It holds the worker's
private peer URL, its pid and the pid's start time (so a pid reused by another process is not
taken for the worker), ``state`` (``serving``, or ``draining`` once the worker leaves), an id of
the cluster secret (an HMAC of a constant: equal ids mean equal secrets, nothing more), the
worker's command line, and its network and pid namespaces. A worker removes its own file when it
stops; a file whose process is gone (a crash, ``kill -9``) is deleted by the next reader. Files
of another namespace (a container sharing the directory) are left alone and ignored: their
addresses and pids mean something else there.

Pure file operations; no asyncio. :mod:`siomesh.local_peers` drives it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import hmac
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "Entry",
    "Rendezvous",
    "RendezvousError",
    "Scan",
    "candidate_roots",
    "pid_alive",
    "process_start",
    "rendezvous_key",
    "secret_id",
]

FORMAT = 1
_SUFFIX = ".json"
_MAX_ENTRY_BYTES = 16_384


class RendezvousError(OSError):
    """The rendezvous directory cannot be used; the message names the directory and the fix."""


def secret_id(secret: str) -> str:
    """A short id of the cluster secret: equal for equal secrets, and reveals nothing else."""
    return hmac.new(secret.encode(), b"siomesh rendezvous v1", hashlib.sha256).hexdigest()[:16]


def rendezvous_key(ports: Iterable[int | str]) -> str:
    """The directory name for a server's public listeners: their ports (or Unix socket paths),
    sorted, joined with ``+``; safe as one path component."""
    parts = sorted({str(p) for p in ports}, key=lambda p: (not p.isdigit(), p.zfill(5)))
    text = "+".join(parts)
    safe = "".join(c if c.isalnum() or c in "+-_." else "_" for c in text)
    return safe.strip(".") or "_"


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), or None when unknown."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22, starttime
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start: int | None) -> bool:
    """Whether ``pid`` runs and is the process that started at ``start`` (when known)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    if start is not None:
        now = process_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused
    return True


def _namespace(kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/self/ns/{kind}")
    except OSError:
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One worker's file."""

    url: str
    pid: int
    start: int | None
    secret_id: str
    command: str
    state: str = "serving"
    netns: str | None = None
    pidns: str | None = None
    since: float = 0.0
    #: the file it was read from (not written)
    path: Path | None = None

    @classmethod
    def for_this_process(cls, url: str, secret: str) -> Entry:
        return cls(
            url=url,
            pid=os.getpid(),
            start=process_start(os.getpid()),
            secret_id=secret_id(secret),
            command=_command_line(),
            netns=_namespace("net"),
            pidns=_namespace("pid"),
            since=time.time(),
        )

    @property
    def file_name(self) -> str:
        port = self.url.rsplit(":", 1)[-1].strip("/]")
        return f"{self.pid}-{port}{_SUFFIX}"

    def to_json(self) -> bytes:
        data = dataclasses.asdict(self)
        data.pop("path")
        return json.dumps({"v": FORMAT, **data}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, path: Path | None = None) -> Entry | None:
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("v") != FORMAT:
            return None
        try:
            return cls(
                url=str(data["url"]),
                pid=int(data["pid"]),
                start=None if data.get("start") is None else int(data["start"]),
                secret_id=str(data["secret_id"]),
                command=str(data.get("command", "")),
                state=str(data.get("state", "serving")),
                netns=data.get("netns"),
                pidns=data.get("pidns"),
                since=float(data.get("since", 0.0)),
                path=path,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def same_namespaces(self, other: Entry) -> bool:
        return self.netns == other.netns and self.pidns == other.pidns


def _command_line() -> str:
    # sys.argv, not /proc/self/cmdline: a worker that multiprocessing spawned (uvicorn
    # --workers) has its parent's argv there, the same in every worker of one server
    import sys

    return " ".join(sys.argv)


@dataclasses.dataclass
class Scan:
    """What one read of the directory found, besides this worker."""

    #: live workers of this machine, same secret (serving or draining)
    peers: list[Entry] = dataclasses.field(default_factory=list)
    #: live workers on the same port with another secret: they cannot mesh with this one
    other_secret: list[Entry] = dataclasses.field(default_factory=list)
    #: files of another network or pid namespace (a container sharing the directory): ignored
    foreign: list[Entry] = dataclasses.field(default_factory=list)
    #: files of processes that are gone, deleted by this read
    removed: list[Entry] = dataclasses.field(default_factory=list)

    @property
    def serving(self) -> list[Entry]:
        return [p for p in self.peers if p.state == "serving"]


def candidate_roots(env: Mapping[str, str], explicit: str | None) -> list[tuple[Path, bool]]:
    """Where the rendezvous may live, best first: ``(directory, created for us)``. The second
    item says the directory is ours alone (checked for owner and mode before use)."""
    if explicit:
        return [(Path(explicit), False)]
    roots: list[tuple[Path, bool]] = []
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        roots.append((Path(runtime) / "siomesh", True))
    roots.append((Path(tempfile.gettempdir()) / f"siomesh-{os.getuid()}", True))
    return roots


class Rendezvous:
    """This worker's file in ``root/key`` and the reading of the others'."""

    def __init__(self, root: Path, key: str, me: Entry, *, private: bool = True) -> None:
        self.root = root
        self.key = key
        self.directory = root / key
        self.me = me
        self._private = private
        self._path = self.directory / me.file_name

    @property
    def path(self) -> Path:
        return self._path

    def open(self) -> None:
        """Create the directory (mode 0700) and write this worker's file; raises
        :class:`RendezvousError` naming the problem and the fix."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._private:
                self._check_private(self.root)
            self.directory.mkdir(mode=0o700, exist_ok=True)
            self.write(self.me)
        except RendezvousError:
            raise
        except OSError as exc:
            raise RendezvousError(exc.errno or 0, self._explain(exc)) from exc

    def _check_private(self, path: Path) -> None:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise RendezvousError(
                errno.ENOTDIR, f"{path} is not a directory: remove it, or set SIOMESH_RUNTIME_DIR"
            )
        if info.st_uid != os.getuid():
            raise RendezvousError(
                errno.EPERM,
                f"{path} belongs to another user (uid {info.st_uid}), who could point this "
                "worker at processes of theirs: remove it, or set SIOMESH_RUNTIME_DIR to a "
                "directory of this user",
            )
        if info.st_mode & 0o077:
            os.chmod(path, 0o700)

    def _explain(self, exc: OSError) -> str:
        reason = exc.strerror or str(exc)
        return (
            f"cannot write the rendezvous under {self.root} ({reason}): set SIOMESH_RUNTIME_DIR "
            "to a writable directory that every worker of this machine sees (e.g. /dev/shm, or "
            "a tmpfs or emptyDir volume in a container)"
        )

    def write(self, entry: Entry) -> None:
        """Write (or rewrite) this worker's file, whole."""
        self.me = entry
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(entry.to_json())
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def set_state(self, state: str) -> None:
        """Rewrite this worker's file with ``state`` (``draining``); errors are ignored."""
        if self.me.state == state:
            return
        with contextlib.suppress(OSError):
            if self._path.exists():
                self.write(dataclasses.replace(self.me, state=state))

    def remove(self) -> None:
        """Delete this worker's file (idempotent; only if it is still this process's)."""
        with contextlib.suppress(OSError):
            raw = self._path.read_bytes()
            entry = Entry.from_json(raw)
            if entry is not None and entry.pid == os.getpid():
                self._path.unlink()

    def scan(self) -> Scan:
        """Read every file but this worker's; delete those of processes that are gone."""
        found = Scan()
        try:
            names = os.listdir(self.directory)
        except OSError:
            return found
        for name in names:
            if name.startswith(".") or not name.endswith(_SUFFIX):
                if name.startswith(".") and name.endswith(".tmp"):
                    self._remove_orphan_tmp(self.directory / name)
                continue
            path = self.directory / name
            if path == self._path:
                continue
            try:
                with path.open("rb") as handle:
                    raw = handle.read(_MAX_ENTRY_BYTES)
            except OSError:
                continue
            entry = Entry.from_json(raw, path)
            if entry is None:
                continue
            if not entry.same_namespaces(self.me):
                found.foreign.append(entry)
                continue
            if entry.pid == self.me.pid:
                continue  # another node of this very process (tests): never a stale file
            if not pid_alive(entry.pid, entry.start):
                with contextlib.suppress(OSError):
                    path.unlink()
                found.removed.append(entry)
                continue
            if entry.secret_id != self.me.secret_id:
                found.other_secret.append(entry)
            else:
                found.peers.append(entry)
        return found

    def _remove_orphan_tmp(self, path: Path) -> None:
        # a writer killed between mkstemp and rename leaves a hidden file: gone after a minute
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > 60:
                path.unlink()
