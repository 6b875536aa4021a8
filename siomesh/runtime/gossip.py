"""The gossip runtime: runs the pure :class:`siomesh.protocol.node.Node` inside a SioMesh node.

* Transport: every protocol message is one ``GOSSIP`` frame on this node's *control* link to the
  peer (:mod:`siomesh.links`), which carries nothing else but calls, so membership never waits
  behind forwarded traffic. Sending never blocks: a frame the link cannot take (no link yet and
  its pending queue full, buffer full, dial backing off) is dropped and counted; the protocol
  tolerates loss. The sender of a received message is the link's authenticated peer.
* Timers: one task calls ``Node.tick`` no later than ``Node.next_tick_at`` (capped at 250 ms).
* Directory: this node's Engine.IO sids, Socket.IO sids per namespace and room memberships are
  published as they change, whatever client manager is installed (the node registers
  :meth:`GossipRuntime.sid_added` and friends with the engine seam, :mod:`siomesh.engine`).
* Seeds: URLs, or ``dns+http://name:port`` names re-resolved every ``DNS_INTERVAL`` seconds.
* :class:`GossipCluster` is the :class:`~siomesh.cluster.ClusterView` that routing and the
  adapter read: O(1) per request except a directory probe that is O(origins).

Everything here runs on the node's event loop; nothing is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
import urllib.parse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..cluster import MemberRef
from ..links.frames import FrameType
from ..links.link import Link
from ..protocol.directory import MOVED, engineio_key, room_key, socketio_key
from ..protocol.membership import GossipConfig, Member
from ..protocol.messages import DecodeError, State, decode, encode
from ..protocol.node import Node, Outbound
from ..sid import SidKeys, generation_tag, node_tag

if TYPE_CHECKING:
    from ..seams import NodeContext

__all__ = ["GossipCluster", "GossipRuntime"]

log = logging.getLogger("siomesh.gossip")

DNS_INTERVAL = 10.0
#: A data link to a member reached only indirectly is closed once it has heard nothing for
#: this long: a silent link under a cut would hold each forward until its timeout (15 s for a
#: POST), while a busy, working one always hears something.
QUIET_LINK = 1.0
#: How long after a member announced it leaves requests for its sessions are still forwarded
#: to it: it drains them (``drain_timeout``, 3 s by default) before it exits.
LEAVING_WINDOW = 30.0
_MAX_TICK_SLEEP = 0.25


class GossipCluster:
    """The live cluster view built from the gossip node, plus the configured seeds.

    For routing, a seed URL that gossip has not learned about yet counts as a live member
    (generation unknown), so that a sid minted by a seed routes correctly during the first
    moments of a cluster's life; once gossip knows the member, its state and generation decide.
    Not for the adapter (:meth:`adapter_peers`): a seed that never answered is not a peer it
    sends to until gossip hears from it.
    """

    def __init__(
        self, node: Node, keys: SidKeys, seeds: Iterable[str], *, room_directory: bool = False
    ) -> None:
        self._node = node
        self._room_directory = room_directory
        self._keys = keys
        self._self_url = node.url
        self._self_tag = node_tag(keys, node.url)
        self._tags: dict[str, str] = {}  # url -> node tag (cached: one HMAC per member)
        self._gen_tags: dict[int, str] = {}
        self._seeds = {u for u in seeds if not u.startswith("dns+") and u != node.url}
        self._seed_by_tag = {self._tag(u): u for u in self._seeds}
        #: URLs whose newest member was seen to leave (and not live since): after their
        #: tombstone is forgotten, they are still not absent peers (see adapter_peers)
        self._left: set[str] = set()
        #: live members this node reaches only through another one (set by the runtime)
        self.indirect: frozenset[str] = frozenset()

    def _tag(self, url: str) -> str:
        tag = self._tags.get(url)
        if tag is None:
            tag = self._tags[url] = node_tag(self._keys, url)
        return tag

    def _gen_tag(self, generation: int) -> str:
        tag = self._gen_tags.get(generation)
        if tag is None:
            if len(self._gen_tags) > 4096:
                self._gen_tags.clear()
            tag = self._gen_tags[generation] = generation_tag(self._keys, generation)
        return tag

    @property
    def self_url(self) -> str:
        return self._self_url

    @property
    def self_tag(self) -> str:
        return self._self_tag

    def member_by_tag(self, tag: str) -> MemberRef | None:
        best: Member | None = None
        for m in self._node.members():
            if (
                m.url != self._self_url
                and self._tag(m.url) == tag
                and (best is None or m.generation > best.generation)
            ):
                best = m
        if best is not None:
            leaving = (
                best.state == State.LEFT and time.monotonic() - best.state_since < LEAVING_WINDOW
            )
            return MemberRef(best.url, best.live, self._gen_tag(best.generation), leaving)
        seed = self._seed_by_tag.get(tag)
        if seed is not None:
            return MemberRef(seed, True, None)
        return None

    def directory_owner(self, sid: str) -> str | None:
        return self._node.directory.owner_of_engineio_sid(sid)

    def is_tombstoned(self, sid: str) -> bool:
        return self._node.directory.is_tombstoned(engineio_key(sid))

    def is_live_member(self, url: str) -> bool:
        if url == self._self_url:
            return False
        member = self._node.member_by_url(url)
        if member is not None:
            return member.live
        return url in self._seeds

    def reached_indirectly(self, url: str) -> bool:
        return url in self.indirect

    def live_peers(self) -> list[str]:
        urls = {m.url for m in self._node.live_members() if m.url != self._self_url}
        known = {m.url for m in self._node.members()}
        urls.update(u for u in self._seeds if u not in known)
        return sorted(urls)

    def adapter_peers(self, known: Iterable[str] = ()) -> tuple[list[str], list[str]]:
        """``(live, absent)`` for the adapter (:mod:`siomesh.adapter`), both sorted.

        ``live``: the peers it sends to, the ALIVE and SUSPECT members gossip knows. Unlike
        :meth:`live_peers`, a seed gossip has not heard from is not one: the adapter would
        hold up to ``max_queue`` messages for it and warn of a partition although it may never
        have run. It becomes one as soon as gossip learns it.

        ``absent``: peers that are not live now but may still run the process they ran, and so
        may hold clients that miss what is not sent to them (the adapter records those messages
        as a gap for them): members declared dead (a frozen or cut-off node refutes its death
        under the same generation), seeds gossip has not heard from, and the URLs in ``known``
        (peers the caller has dealt with, possibly forgotten by gossip since) that are not live
        and did not leave. A member that left is in neither: it hands its clients over.
        """
        me = self._self_url
        live: set[str] = set()
        newest: dict[str, Member] = {}
        for m in self._node.members():
            if m.url == me:
                continue
            if m.live:
                live.add(m.url)
            best = newest.get(m.url)
            if best is None or m.generation > best.generation:
                newest[m.url] = m
        absent: set[str] = set()
        for url, m in newest.items():
            if url in live:
                self._left.discard(url)
            elif m.state == State.LEFT:
                self._left.add(url)
            else:
                absent.add(url)
        absent.update(s for s in self._seeds if s not in newest)
        absent.update(u for u in known if u not in live and u not in self._left and u != me)
        return sorted(live), sorted(absent)

    def room_owners(self, namespace: str, room: str) -> set[str] | None:
        """Members that have ``room`` per the directory (eventually consistent); ``None``
        (meaning every live member) unless ``room_routing="directory"``."""
        if not self._room_directory:
            return None
        return self._node.directory.owners_of_room(namespace, room)

    def member_counts(self) -> dict[str, int]:
        counts = {s.name.lower(): 0 for s in State}
        for m in self._node.members():
            counts[m.state.name.lower()] += 1
        return counts

    def directory_sizes(self) -> dict[str, int]:
        d = self._node.directory
        return {origin: d.origin_size(origin) for origin in d.origins()}

    def left_within(self, seconds: float) -> list[str]:
        """URLs of members that this node learnt left (drained) less than ``seconds`` ago."""
        now = time.monotonic()
        return [
            m.url
            for m in self._node.members()
            if m.state == State.LEFT and m.url != self._self_url and now - m.state_since < seconds
        ]

    def members_status(self) -> list[dict[str, Any]]:
        d = self._node.directory
        out = []
        for m in sorted(self._node.members(), key=lambda m: m.url):
            out.append(
                {
                    "url": m.url,
                    "state": m.state.name.lower(),
                    "generation": m.generation,
                    "incarnation": m.incarnation,
                    "sessions": d.engineio_count(m.node_id),
                    "self": m.url == self._self_url,
                }
            )
        return out


class GossipRuntime:
    """Owns the :class:`Node`, its timer task and its transport (see the module docstring)."""

    def __init__(self, mesh: NodeContext, config: GossipConfig | None = None) -> None:
        self.mesh = mesh
        self.config = config or mesh.config.gossip
        url = mesh.config.node_url
        seeds = [p for p in mesh.config.peers if not p.startswith("dns+")]
        self._dns = [p[4:] for p in mesh.config.peers if p.startswith("dns+")]
        self.node = Node(
            node_id=url,
            url=url,
            generation=mesh.generation,
            config=self.config,
            rng=random.Random(),
            seeds=seeds,
        )
        self.cluster = GossipCluster(
            self.node,
            mesh.keys,
            seeds,
            room_directory=mesh.config.adapter.room_routing == "directory",
        )
        self._task: asyncio.Task[None] | None = None
        self._dns_task: asyncio.Task[None] | None = None
        self._moved: set[str] = set()
        self._stopping = False
        self._left = False
        self._links = mesh.links
        self._links.dispatcher.on(FrameType.GOSSIP, self._receive)
        self._closing: set[asyncio.Task[None]] = set()

    # -- directory publication -------------------------------------------------------------------

    def sid_added(self, sid: str) -> None:
        self.node.add_local(engineio_key(sid))

    def sid_removed(self, sid: str) -> None:
        if sid in self._moved:
            return  # marked moved: deleted later by sid_moved's timer
        self.node.remove_local(engineio_key(sid))

    def sid_moved(self, sid: str, linger: float) -> None:
        """Session ``sid`` was handed to another member (upgrade takeover): keep its entry,
        marked :data:`~siomesh.protocol.directory.MOVED`, for ``linger`` seconds (peers that
        learn the new owner's entry route there; the others still reach this node, which
        forwards), then delete it. Call before removing the sid from the sockets dict."""
        key = engineio_key(sid)
        self.node.add_local(key, MOVED)
        self._moved.add(sid)

        def forget() -> None:
            self._moved.discard(sid)
            self.node.remove_local(key)

        asyncio.get_running_loop().call_later(linger, forget)

    def _room_key(self, namespace: str, room: Any, sid: str) -> str | None:
        if ":" in namespace:
            return None  # the directory's key format cannot hold it; routing falls back
        if room is None:
            return socketio_key(namespace, sid)
        if room == sid:
            return None  # a sid's own room: the sid tag already routes it
        return room_key(namespace, str(room), sid)

    def room_entered(self, manager: Any, sid: str, namespace: str, room: Any) -> None:
        """Engine seam room hook (:meth:`siomesh.engine.EngineSeam.on_rooms`): publish it."""
        key = self._room_key(namespace, room, sid)
        if key is not None:
            self.node.add_local(key)

    def room_left(self, manager: Any, sid: str, namespace: str, room: Any) -> None:
        key = self._room_key(namespace, room, sid)
        if key is not None:
            self.node.remove_local(key)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        if self._dns:
            await self._resolve_dns()
            self._dns_task = asyncio.ensure_future(self._dns_loop())
        self._task = asyncio.ensure_future(self._run())

    def announce_leave(self) -> None:
        """Tell every live peer this node is leaving (they record it as *left*, not dead, and
        stop routing to it); idempotent. The runtime keeps running, so this node still sees
        the cluster (a draining node forwards to its peers)."""
        if self._left:
            return
        self._left = True
        self._send(self.node.leave(time.monotonic()))

    async def stop(self) -> None:
        """Announce a graceful leave (bounded to 1 s), then stop every task."""
        self._stopping = True
        for task in (self._task, self._dns_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.announce_leave()
        # let the writers put the leave on the wire before the links close (bounded)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and self._links.pending_control():
            await asyncio.sleep(0.01)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                self._send(self.node.tick(time.monotonic()))
                self._note_reach()
            except Exception:  # a bug in one tick must not stop membership for good
                log.exception("gossip tick failed")
            delay = min(max(self.node.next_tick_at() - time.monotonic(), 0.001), _MAX_TICK_SLEEP)
            expected = time.monotonic() + delay
            await asyncio.sleep(delay)
            # how late the loop woke us: a starved loop must not turn into accusations
            self.node.note_lag(time.monotonic() - expected)

    # -- transport -------------------------------------------------------------------------------

    def _send(self, outbound: list[Outbound]) -> None:
        stats = self.mesh.stats
        for url, msg in outbound:
            body = encode(msg)
            if self._links.post(url, "control", FrameType.GOSSIP, body):
                stats.bump("gossip_messages_sent")
                stats.bump("gossip_bytes_sent", len(body))
            else:
                stats.bump("gossip_dropped")

    def _receive(self, link: Link, body: bytes) -> None:
        stats = self.mesh.stats
        stats.bump("gossip_messages_received")
        stats.bump("gossip_bytes_received", len(body))
        try:
            msg = decode(body, self.config.max_message_bytes)
        except DecodeError as exc:
            # an authenticated peer sent garbage: count it and drop it, the link stays up
            stats.bump("gossip_bad_messages")
            log.warning("bad gossip message from %s: %s", link.peer, exc)
            return
        # heard from it: a dial that failed a moment ago (a heal) is retried at once
        self._links.revive(link.peer)
        self._send(self.node.receive(link.peer, msg, time.monotonic()))
        if self.cluster.indirect:
            self._note_reach()  # a direct Ack: reachable again at once

    def _note_reach(self) -> None:
        """Keep :attr:`GossipCluster.indirect` in step with the gossip node, say when it
        changes, and close silent data links to members reached only indirectly: the
        forwarder then goes through a third member at once instead of waiting on a link whose
        packets a cut drops until the link's heartbeat (``links.heartbeat``) notices."""
        before = self.cluster.indirect
        now = frozenset(self.node.reached_indirectly())
        if now != before:
            self.cluster.indirect = now
            for url in sorted(now - before):
                self.mesh.stats.bump("peers_reached_indirectly")
                log.warning(
                    "cannot reach %s directly (its gossip probes are answered only through "
                    "another member): a network partition or a firewall rule between the two "
                    "nodes? Requests for its sessions go through another member meanwhile",
                    url,
                )
            for url in sorted(before - now):
                log.warning("reaching %s directly again", url)
        if now:
            moment = time.monotonic()
            for url in now:
                link = self._links.current(url, "data")
                if link is not None and moment - link.heard_at >= QUIET_LINK:
                    self.mesh.stats.bump("quiet_links_closed")
                    task = asyncio.ensure_future(
                        link.shutdown(reason="peer reached only indirectly, link silent")
                    )
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)

    # -- DNS seeds -------------------------------------------------------------------------------

    async def _dns_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(DNS_INTERVAL)
            await self._resolve_dns()

    async def _resolve_dns(self) -> None:
        loop = asyncio.get_running_loop()
        found: list[str] = []
        for base in self._dns:
            parts = urllib.parse.urlsplit(base)
            host, port = parts.hostname or "", parts.port or 80
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=5.0
                )
            except (OSError, asyncio.TimeoutError) as exc:
                log.warning("cannot resolve seed %s: %s", base, exc)
                continue
            for info in infos:
                address = str(info[4][0])
                shown = f"[{address}]" if ":" in address else address
                found.append(f"{parts.scheme}://{shown}:{port}")
        if found:
            self.node.add_seeds(found)
