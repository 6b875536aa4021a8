"""Workers that mesh themselves: ``SioMesh(app)`` under ``uvicorn --workers N`` or gunicorn.

With no ``node_url`` (no ``SIOMESH_NODE_URL``), a SioMesh node is one worker among the
processes that share a public port, and needs an address of its own where its peers forward
to it. So, when the app is built (in the worker process), :meth:`LocalPeers.prepare` binds a
*private* listening socket: on ``127.0.0.1`` and any free port by default, or on
``SIOMESH_ADVERTISE_HOST`` and the first free port of ``SIOMESH_PEER_PORTS`` (a cluster across
machines). Its URL is the node's ``node_url``. At lifespan startup the worker serves the same
ASGI app on it (uvicorn's HTTP and WebSocket protocols, on the worker's own event loop: peer
links and forwarded requests reach the node there), and keeps serving it while it drains, after
the public port closed. ``siomesh run`` binds its workers' private ports with the same
:func:`bind_listener`, and serves them from its uvicorn server.

The workers of one machine then find each other through a rendezvous directory named after the
public port (:mod:`siomesh.rendezvous`). A worker learns that port from the listening sockets
the server handed it: uvicorn's and gunicorn's supervisors bind the public socket before they
start the workers, and each worker holds it as an open descriptor, so it is read from the
process's descriptors (:func:`public_listeners`), the private socket excepted;
``SIOMESH_PUBLIC_PORT`` names it where that cannot work. A single uvicorn process binds after
lifespan startup: it is read a moment later. Each worker writes its file, reads the others',
and knocks on every one that gossip does not know yet (a gossip Syn over a peer link: the join
of :mod:`siomesh.runtime.gossip`); the directory is read again every ``REFRESH`` seconds, so
workers that start later (gunicorn TTIN, a restart, a reload) are found, and gossip spreads
membership besides. At startup a worker waits (at most ``JOIN_WAIT`` s) until the workers it
found know it, so the sessions it creates route from its first request.

On SIGTERM a worker whose sessions have nowhere to go yet (gunicorn's reload, HUP, starts the
new workers and stops the old ones at once) waits, at most ``REPLACEMENT_WAIT`` s, for a
younger sibling process still booting to join before it drains (:func:`hold_sigterm`).

Misconfigurations are logged with their fix: a rendezvous directory that cannot be written,
another app with another secret on the same port, a ``SIOMESH_PEERS`` that names other machines
while this worker advertises loopback, an app built before the server forked its workers
(gunicorn ``--preload``). A worker with nothing to find (one worker per container) says so at
INFO: that is fine.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import functools
import ipaddress
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from .config import ConfigError, local_options, parse_port_range
from .links.frames import FrameType as LinkFrame
from .protocol.messages import Syn, encode
from .rendezvous import (
    Entry,
    Rendezvous,
    RendezvousError,
    Scan,
    candidate_roots,
    process_start,
    rendezvous_key,
)

if TYPE_CHECKING:
    from .middleware import SioMesh
    from .node import MeshNode

__all__ = [
    "JOIN_WAIT",
    "REFRESH",
    "REPLACEMENT_WAIT",
    "LocalPeers",
    "bind_listener",
    "free_port",
    "hold_sigterm",
    "is_wildcard",
    "private_host",
    "public_listeners",
]

log = logging.getLogger("siomesh")

#: Seconds between two reads of the rendezvous directory.
REFRESH = 1.0
#: Longest wait at startup for the workers found to know this one.
JOIN_WAIT = 3.0
#: A worker that found nobody for this long says it is alone (once, INFO).
ALONE_AFTER = 5.0
#: Longest a stopping worker waits for a replacement to join before it drains.
REPLACEMENT_WAIT = 10.0
#: Longest a worker at its request limit waits while another worker of its machine drains.
MAX_REQUESTS_WAIT = 15.0


# -- sockets (shared with siomesh run) ------------------------------------------------------------


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def private_host(host: str) -> str:
    """Where a private port listens for a public ``host``: the host itself, or loopback when
    it is a wildcard (an address to bind, not one to connect to)."""
    if is_wildcard(host):
        return "::1" if ":" in host else "127.0.0.1"
    return host.strip("[]")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str) -> int:
    """A port free on ``host`` now (the kernel's choice)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bind_listener(
    host: str, port: int, *, reuse_port: bool = False, backlog: int = 2048
) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``SO_REUSEADDR``; ``SO_REUSEPORT`` when asked:
    several processes then share the port). Raises OSError."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def bind_private(advertise_host: str, ports: tuple[int, int] | None) -> tuple[socket.socket, str]:
    """This worker's private listener and its URL: on ``advertise_host`` when it is an address
    of this machine, else on the wildcard (a name, or an address that NAT maps here); on the
    first free port of ``ports``, or any free port. Raises :class:`ConfigError` with the fix."""
    host = advertise_host.strip("[]")
    candidates = range(ports[0], ports[1] + 1) if ports is not None else [0]
    bind_host = host
    for port in candidates:
        try:
            sock = bind_listener(bind_host, port)
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL) or isinstance(exc, socket.gaierror):
                if bind_host == host and not is_wildcard(host):
                    bind_host = "::" if ":" in host else "0.0.0.0"
                    try:
                        sock = bind_listener(bind_host, port)
                    except OSError:
                        continue
                    log.info(
                        "siomesh: %s is not an address of this machine: the private peer port "
                        "listens on %s and is advertised as %s",
                        host,
                        bind_host,
                        host,
                    )
                else:
                    continue
            elif exc.errno == errno.EADDRINUSE and ports is not None:
                continue
            else:
                raise ConfigError(
                    f"cannot open this worker's private peer port on {host}: {exc}; set "
                    "SIOMESH_ADVERTISE_HOST to an address of this machine"
                ) from exc
        return sock, _url(host, int(sock.getsockname()[1]))
    shown = f"{ports[0]}-{ports[1]}" if ports is not None else "any"
    raise ConfigError(
        f"no free private peer port on {host} in SIOMESH_PEER_PORTS={shown}: there are more "
        "workers than ports; widen the range (one port per worker, plus one per worker being "
        "restarted)"
    )


def public_listeners(exclude: Collection[int] = ()) -> list[int | str]:
    """The ports (or Unix socket paths) of the stream sockets this process listens on, read
    from its open descriptors: what uvicorn's and gunicorn's supervisors handed this worker.
    Descriptors in ``exclude`` are skipped."""
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return []
    found: list[int | str] = []
    for name in names:
        try:
            fd = int(name)
        except ValueError:
            continue
        if fd in exclude:
            continue
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if sock.type != socket.SOCK_STREAM:
                continue
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                continue
            address = sock.getsockname()
        except OSError:
            continue
        finally:
            sock.detach()  # the descriptor stays the server's
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            found.append(int(address[1]))
        elif sock.family == socket.AF_UNIX and isinstance(address, str) and address:
            found.append(address)
    return found


# -- the private server -------------------------------------------------------------------------


class _PrivateServer:
    """uvicorn's HTTP and WebSocket protocols serving ``app`` on ``sock``, on the running event
    loop, with no lifespan and no signal handling of its own (the worker's server owns both)."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        self.app = app
        self.sock = sock
        self._server: Any = None

    async def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,  # peers talk over links; nothing here is a proxy's request
            interface="asgi3",
            timeout_graceful_shutdown=2,
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[self.sock])
        self._server = server

    async def close(self, timeout: float = 2.0) -> None:
        server = self._server
        if server is None:
            with contextlib.suppress(OSError):
                self.sock.close()
            return
        self._server = None
        for listener in getattr(server, "servers", []):
            listener.close()
        with contextlib.suppress(OSError):
            self.sock.close()
        state = server.server_state
        for connection in list(state.connections):
            connection.shutdown()
        deadline = time.monotonic() + timeout
        while (state.connections or state.tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in list(state.tasks):
            task.cancel()
        for connection in list(state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()


# -- the component ------------------------------------------------------------------------------


class LocalPeers:
    """One worker's private listener and rendezvous (see the module docstring)."""

    def __init__(
        self,
        sock: socket.socket,
        node_url: str,
        options: Mapping[str, Any],
        env: Mapping[str, str],
    ) -> None:
        self.sock = sock
        self.node_url = node_url
        self.options = dict(options)
        self.env = env
        #: the process that built the app: a worker forked from it shares its private socket
        self.built_in = os.getpid()
        self.mesh: SioMesh | None = None
        self.rendezvous: Rendezvous | None = None
        self.key: str | None = None
        self.peers: dict[str, Entry] = {}
        self._server = _PrivateServer(None, sock)
        self._listening = False
        self._started = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self._alone_said = False
        self._warned: set[tuple[Any, ...]] = set()
        self._knocked: dict[str, float] = {}
        self._rendezvous_error: str | None = None
        self._retry_at = 0.0
        self._atexit: Callable[[], None] | None = None

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def prepare(
        cls,
        *,
        node_url: str | None,
        env: Mapping[str, str] | None,
        options: dict[str, Any],
    ) -> LocalPeers | None:
        """None when the node has a ``node_url`` (argument or ``SIOMESH_NODE_URL``); else bind
        this worker's private listener, as :data:`~siomesh.config.LOCAL_OPTIONS` in
        ``options`` (keyword arguments, left in place: they are MeshConfig options too) or the
        environment say. Raises :class:`~siomesh.config.ConfigError` with the fix."""
        source = os.environ if env is None else env
        if node_url or source.get("SIOMESH_NODE_URL"):
            return None
        values = local_options(source, options)
        ports = parse_port_range(values["peer_ports"]) if values["peer_ports"] else None
        advertise = values["advertise_host"] or "127.0.0.1"
        if is_wildcard(advertise):
            raise ConfigError(
                f"SIOMESH_ADVERTISE_HOST={advertise!r} is a wildcard address (what a server binds "
                "to, which nobody can connect to): set it to the address other machines reach "
                "this one at, e.g. 10.0.0.1"
            )
        sock, url = bind_private(advertise, ports)
        return cls(sock, url, values, source)

    def attach(self, mesh: SioMesh) -> None:
        """Wire into ``mesh`` (built with :attr:`node_url`)."""
        self.mesh = mesh
        self._server.app = mesh
        node = mesh.node
        node.on_drain(self._draining)
        if node.gossip is None:
            log.warning(
                "siomesh: gossip=False without a node_url: the workers of this machine are not "
                "discovered (discovery adds members through gossip). Enable gossip, or give "
                "each worker SIOMESH_NODE_URL and SIOMESH_PEERS"
            )

    def abandon(self) -> None:
        """The app could not be built: release the private socket."""
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.close()

    @property
    def node(self) -> MeshNode:
        assert self.mesh is not None
        return self.mesh.node

    # -- lifecycle ------------------------------------------------------------------------------

    async def listen(self) -> None:
        """Serve the app on the private port (idempotent); before the node starts, so that
        peers can reach it as soon as they learn of it."""
        if self._listening or self._closed:
            return
        if os.getpid() != self.built_in:
            raise RuntimeError(
                f"this app was built in process {self.built_in}, before the server forked this "
                f"worker (process {os.getpid()}): every worker would share one private peer "
                f"port and node_url ({self.node_url}). Build the app in each worker (gunicorn: "
                "drop --preload), or give each worker its own SIOMESH_NODE_URL"
            )
        self._listening = True
        await self._server.start()

    async def start(self) -> None:
        """After the node started: join the workers of this machine (idempotent)."""
        if self._started or self._closed:
            return
        self._started = True
        self._started_at = time.monotonic()
        self._warn_about_seeds()
        self._refresh()
        if self.rendezvous is not None:
            await self._wait_joined(JOIN_WAIT)
        self._task = asyncio.ensure_future(self._loop())

    async def close(self) -> None:
        """After the node stopped: withdraw and stop listening (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._withdraw()
        await self._server.close()

    def tune_server(self, server: Any) -> None:
        """Adjust the uvicorn server running this worker (``server``, see
        :func:`~siomesh.drain.uvicorn_server`; nothing happens under another server, None):
        drain before it stops on its own (``--max-requests``, gunicorn's ``max_requests``),
        one worker at a time: siomesh takes the request limit over from uvicorn, which would
        close its WebSockets at once and run the lifespan shutdown only after (the calls in
        flight on them lost); when the limit is reached the worker waits (at most
        ``MAX_REQUESTS_WAIT`` s) while another worker of this machine drains, then drains
        while it still listens, then lets uvicorn stop.

        Its wait for requests in flight at shutdown is bounded as for every node
        (:func:`~siomesh.drain.bound_server_shutdown`, called by the middleware): here, a
        request that never ends would keep a drained worker, its private port and its
        rendezvous file until the supervisor kills it, with no lifespan shutdown.
        """
        config = getattr(server, "config", None)
        if config is None:
            return
        tick = getattr(server, "on_tick", None)
        state = getattr(server, "server_state", None)
        if tick is None or state is None or getattr(tick, "_siomesh", False):
            return
        limit = getattr(server, "limit_max_requests", getattr(config, "limit_max_requests", None))
        if not isinstance(limit, int):
            return
        config.limit_max_requests = None  # uvicorn's own check, off (the cached value too)
        vars(server).pop("limit_max_requests", None)
        node = self.node
        waiting_since: float | None = None
        said: list[str] = []

        async def on_tick(counter: int) -> bool:
            nonlocal waiting_since
            if await tick(counter):
                return True
            if state.total_requests < limit or node.state != "serving":
                return False
            now = time.monotonic()
            if waiting_since is None:
                waiting_since = now
            if now - waiting_since < MAX_REQUESTS_WAIT:
                if counter % 5:
                    return False  # look at the others twice a second
                busy = self._draining_peer()
                if busy is not None:
                    if not said:
                        said.append(busy)
                        log.info(
                            "siomesh node %s reached its request limit (%d): waiting for %s "
                            "to finish draining first",
                            self.node_url,
                            limit,
                            busy,
                        )
                    return False
            log.warning(
                "siomesh node %s reached its request limit (%d): draining, then stopping",
                self.node_url,
                limit,
            )
            try:
                await asyncio.wait_for(node.drain(), node.config.drain_timeout + 1.0)
            except Exception:
                log.exception("siomesh drain failed; stopping anyway")
            return True

        on_tick._siomesh = True  # type: ignore[attr-defined]
        server.on_tick = on_tick

    def _draining_peer(self) -> str | None:
        """A worker of this machine that is draining now (its file says so), or None."""
        if self.rendezvous is None:
            return None
        for entry in self.rendezvous.scan().peers:
            if entry.state == "draining":
                return entry.url
        return None

    def _draining(self) -> None:
        # Still read and knock while draining (a replacement must learn of this node, so that
        # the polls of sessions still here are forwarded); the file says "draining", so that
        # nobody counts on this node any more.
        if self.rendezvous is not None:
            self.rendezvous.set_state("draining")

    def _withdraw(self) -> None:
        if self.rendezvous is not None:
            self.rendezvous.remove()
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None

    # -- discovery ------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH)
            try:
                self._refresh()
            except Exception:  # a bug here must not stop discovery for good
                log.exception("siomesh: reading the rendezvous failed")

    def _refresh(self) -> None:
        if self.rendezvous is None and not self._open_rendezvous():
            return
        assert self.rendezvous is not None
        scan = self.rendezvous.scan()
        self._report(scan)
        found = {e.url: e for e in scan.peers}
        if set(found) != set(self.peers):
            new = sorted(set(found) - set(self.peers))
            if new:
                log.info(
                    "siomesh: %d other worker(s) of this machine serve %s: %s",
                    len(found),
                    self._port_text(),
                    ", ".join(new),
                )
        self.peers = found
        for entry in scan.serving:
            if not self._knows(entry.url):
                self._knock(entry.url)
        if (
            not self._alone_said
            and not self.peers
            and time.monotonic() - self._started_at >= ALONE_AFTER
        ):
            self._alone_said = True
            log.info(
                "siomesh: no other worker of this machine serves %s: this node is alone, which "
                "is fine for one worker per container (give SIOMESH_PEERS and "
                "SIOMESH_ADVERTISE_HOST to mesh several machines or containers)",
                self._port_text(),
            )
        elif self.peers:
            self._alone_said = True

    def _port_text(self) -> str:
        return f"port {self.key}" if self.key and self.key.isdigit() else f"{self.key}"

    def _open_rendezvous(self) -> bool:
        if self._rendezvous_error is not None and time.monotonic() < self._retry_at:
            return False
        if self.key is None:
            self.key = self._public_key()
            if self.key is None:
                if time.monotonic() - self._started_at >= ALONE_AFTER:
                    self._warn_once(
                        ("no-port",),
                        "siomesh: this worker cannot tell which public port it serves (no "
                        "listening socket among its descriptors): the workers of this machine "
                        "do not find each other. Set SIOMESH_PUBLIC_PORT to the port they share",
                    )
                return False
        me = Entry.for_this_process(self.node_url, self.node.config.secret)
        errors: list[str] = []
        for root, private in candidate_roots(self.env, self.options.get("runtime_dir")):
            rendezvous = Rendezvous(root, self.key, me, private=private)
            try:
                rendezvous.open()
            except RendezvousError as exc:
                errors.append(str(exc.strerror or exc))
                continue
            self.rendezvous = rendezvous
            if self._rendezvous_error is not None or errors:
                log.warning("siomesh: %s; using %s instead", errors[0], rendezvous.directory)
            self._rendezvous_error = None
            self._atexit = functools.partial(_remove_at_exit, rendezvous.path, me.pid)
            atexit.register(self._atexit)
            log.info(
                "siomesh: worker %s (pid %d) meshes with the workers of this machine that "
                "serve %s (rendezvous %s)",
                self.node_url,
                me.pid,
                self._port_text(),
                rendezvous.directory,
            )
            return True
        if self._rendezvous_error is None:
            log.error(
                "siomesh: %s. Until then this worker is alone: sessions of other workers "
                "that reach it fail. Or give each worker SIOMESH_NODE_URL and SIOMESH_PEERS",
                errors[-1] if errors else "no rendezvous directory",
            )
        self._rendezvous_error = errors[-1] if errors else "?"
        self._retry_at = time.monotonic() + 30.0
        return False

    def _public_key(self) -> str | None:
        explicit = self.options.get("public_port")
        if explicit:
            return rendezvous_key([int(explicit)])
        ports = public_listeners(exclude={self.sock.fileno()})
        mine = self.sock.getsockname()[1]
        ports = [p for p in ports if p != mine]
        return rendezvous_key(ports) if ports else None

    def _report(self, scan: Scan) -> None:
        for entry in scan.other_secret:
            self._warn_once(
                ("secret", entry.pid),
                "siomesh: process %d (%s) also serves %s on this machine, with another secret: "
                "the two cannot mesh, and clients fail whenever the port sends them to the "
                "other. Two different apps on one port? Serve them on different ports; or, if "
                "they are one app, give every worker the same SIOMESH_SECRET",
                entry.pid,
                entry.command or "?",
                self._port_text(),
                level=logging.ERROR,
            )
        for entry in scan.foreign:
            self._warn_once(
                ("foreign", entry.netns, entry.pidns),
                "siomesh: %s holds rendezvous files of another container (network or pid "
                "namespace), e.g. process %d at %s: ignored. Give each container its own "
                "SIOMESH_RUNTIME_DIR (and SIOMESH_PEERS with SIOMESH_ADVERTISE_HOST to mesh them)",
                self.rendezvous.directory if self.rendezvous else "?",
                entry.pid,
                entry.url,
            )
        me = self.rendezvous.me.command if self.rendezvous else ""
        for entry in scan.peers:
            if entry.command and me and entry.command != me:
                self._warn_once(
                    ("command", entry.command),
                    "siomesh: process %d serves %s with another command line (%r; this worker: "
                    "%r) and the same secret: they are meshed as one app. If they are two "
                    "different apps, serve them on different ports",
                    entry.pid,
                    self._port_text(),
                    entry.command,
                    me,
                )

    def _warn_once(self, key: tuple[Any, ...], message: str, *args: Any, level: int = 30) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        log.log(level, message, *args)

    def _warn_about_seeds(self) -> None:
        host = self.node_url.rsplit(":", 1)[0].split("://", 1)[1].strip("[]")
        if not is_loopback(host):
            return
        remote = [
            p
            for p in self.node.config.peers
            if not p.startswith("dns+") and not is_loopback(_host_of(p))
        ]
        if remote:
            log.error(
                "siomesh: SIOMESH_PEERS names other machines (%s) but this worker advertises "
                "%s, which they cannot reach: set SIOMESH_ADVERTISE_HOST to this machine's "
                "address (and SIOMESH_PEER_PORTS to a port range they may connect to)",
                ", ".join(remote),
                self.node_url,
            )

    def _knows(self, url: str) -> bool:
        gossip = self.node.gossip
        if gossip is None:
            return True
        member = gossip.node.member_by_url(url)
        return member is not None and member.live

    def _knock(self, url: str) -> None:
        """Send ``url`` a gossip Syn, as a joining node does to its seeds: it learns of this
        node, and answers with its view."""
        now = time.monotonic()
        if now - self._knocked.get(url, -1e9) < REFRESH * 0.9:
            return
        self._knocked[url] = now
        if len(self._knocked) > 4096:
            self._knocked = {u: t for u, t in self._knocked.items() if now - t < 60}
        gossip = self.node.gossip
        if gossip is None:
            return
        core = gossip.node
        syn = Syn(
            core.node_id,
            tuple(m.update() for m in core.members()),
            core.directory.digest_items(),
        )
        body = encode(syn)
        stats = self.node.stats
        if self.node.links.post(url, "control", LinkFrame.GOSSIP, body):
            stats.bump("gossip_messages_sent")
            stats.bump("local_knocks")

    async def _wait_joined(self, bound: float) -> None:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            waiting = [u for u, e in self.peers.items() if e.state == "serving"]
            if all(self._knows(u) for u in waiting):
                return
            await asyncio.sleep(0.05)
            for url in waiting:
                if not self._knows(url):
                    self._knock(url)
        missing = [u for u in self.peers if not self._knows(u)]
        if missing:
            log.warning(
                "siomesh: worker %s has not heard from %s after %.0f s (busy, stopping, or "
                "started with another secret?); going on",
                self.node_url,
                ", ".join(missing),
                bound,
            )

    # -- SIGTERM --------------------------------------------------------------------------------

    def replacement_booting(self) -> bool:
        """Whether this worker should wait before draining: a younger sibling process (a
        replacement its supervisor started: gunicorn's reload starts the new workers and stops
        the old ones at once) has not written its rendezvous file yet, or has and is not known
        to gossip yet. Siblings are the processes of this worker's parent with its command line,
        started after it."""
        if self.rendezvous is None:
            return False
        scan = self.rendezvous.scan()
        self.peers = {e.url: e for e in scan.peers}
        mine = process_start(os.getpid())
        waiting = False
        for entry in scan.serving:
            if self._knows(entry.url):
                continue
            self._knock(entry.url)
            if mine is not None and entry.start is not None and entry.start >= mine:
                waiting = True  # a replacement that registered: until it has joined
        return waiting or bool(self._booting_siblings())

    def _booting_siblings(self) -> list[int]:
        parent = os.getppid()
        me = os.getpid()
        mine = process_start(me)
        if parent < 1 or mine is None:  # 1 is fine: gunicorn as a container's init
            return []
        command = _cmdline(me)
        registered = {e.pid for e in self.peers.values()}
        siblings: list[int] = []
        with contextlib.suppress(OSError):
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                pid = int(name)
                if pid == me or pid in registered or _parent_of(pid) != parent:
                    continue
                started = process_start(pid)
                if started is not None and started >= mine and _cmdline(pid) == command:
                    siblings.append(pid)
        return siblings


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read(65536)
    except OSError:
        return None


def _remove_at_exit(path: Path, pid: int) -> None:
    # a worker that exits without its lifespan shutdown (lifespan off, sys.exit)
    with contextlib.suppress(OSError):
        if os.getpid() == pid:
            path.unlink()


def _host_of(url: str) -> str:
    rest = url.split("://", 1)[-1]
    if rest.startswith("["):
        return rest[1 : rest.find("]")]
    return rest.rsplit(":", 1)[0]


def _parent_of(pid: int) -> int | None:
    try:
        raw = open(f"/proc/{pid}/stat", "rb").read()  # noqa: SIM115 - one short read
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


def hold_sigterm(local: LocalPeers) -> bool:
    """Wrap the current SIGTERM handler (the drain's, around the server's): the first SIGTERM
    waits, at most :data:`REPLACEMENT_WAIT` s, while :meth:`LocalPeers.replacement_booting`,
    then calls it; a second SIGTERM calls it at once. True if wrapped (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    original = signal.getsignal(signal.SIGTERM)
    if not callable(original) or getattr(original, "_siomesh_hold", False):
        return False
    loop = asyncio.get_running_loop()
    task: asyncio.Task[None] | None = None

    async def wait_then_go(signum: int, frame: FrameType | None) -> None:
        try:
            deadline = time.monotonic() + REPLACEMENT_WAIT
            if local.replacement_booting():
                log.warning(
                    "siomesh node %s stopping: waiting (at most %.0f s) for a new worker to "
                    "join, so that its sessions have somewhere to go",
                    local.node_url,
                    REPLACEMENT_WAIT,
                )
                while time.monotonic() < deadline and local.replacement_booting():
                    await asyncio.sleep(0.2)
                log.warning(
                    "siomesh node %s: %s; draining",
                    local.node_url,
                    "the new worker joined"
                    if time.monotonic() < deadline
                    else f"no new worker joined within {REPLACEMENT_WAIT:.0f} s",
                )
        except Exception:
            log.exception("siomesh: waiting for a replacement failed; draining now")
        assert callable(original)
        original(signum, frame)

    def start(signum: int, frame: FrameType | None) -> None:
        nonlocal task
        if task is None:
            task = loop.create_task(wait_then_go(signum, frame))

    def handler(signum: int, frame: FrameType | None) -> Any:
        if task is None and not loop.is_closed():
            loop.call_soon_threadsafe(start, signum, frame)
            return None
        assert callable(original)
        return original(signum, frame)

    handler._siomesh_hold = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, handler)
    return True
