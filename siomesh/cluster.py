"""The cluster view that routing consults: which members exist, which are alive, who owns a sid.

:class:`ClusterView` is the seam between routing and membership. :class:`StaticCluster` is the
view built from a fixed peer list (every listed peer is assumed alive; a dead one is found out by
a failed connect, which turns into the client's 400). The gossip runtime provides a live view
with the same interface. Implementations are read from the event loop thread only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .sid import SidKeys, node_tag

__all__ = ["ClusterView", "MemberRef", "StaticCluster"]


@dataclass(frozen=True, slots=True)
class MemberRef:
    """What routing needs to know of a member."""

    url: str
    alive: bool
    #: The generation tag of the member's current process, or ``None`` when not known (static
    #: membership): then a sid's generation cannot be checked and the owner answers for itself.
    generation_tag: str | None = None
    #: The member announced it leaves (it drains): it still serves its sessions for a while,
    #: so requests for them are still forwarded to it (it answers for them, or a failed dial
    #: answers the client's 400 once it is gone).
    leaving: bool = False


class ClusterView(Protocol):
    """Read-only view of the cluster, consulted on every routed request (must be O(1))."""

    @property
    def self_url(self) -> str: ...

    @property
    def self_tag(self) -> str: ...

    def member_by_tag(self, tag: str) -> MemberRef | None:
        """The member whose node tag is ``tag``, alive or not; ``None`` if none is known."""
        ...

    def directory_owner(self, sid: str) -> str | None:
        """URL of the member the gossiped directory says owns ``sid``, if any."""
        ...

    def is_tombstoned(self, sid: str) -> bool:
        """Whether the directory knows ``sid`` was closed."""
        ...

    def is_live_member(self, url: str) -> bool:
        """Whether ``url`` is a current, alive member's advertised URL (never this node)."""
        ...

    def live_peers(self) -> list[str]:
        """Advertised URLs of every alive member but this node."""
        ...

    def reached_indirectly(self, url: str) -> bool:
        """Whether member ``url`` is alive but this node reaches it only through another
        member (gossip's indirect probes): send its requests through a third member."""
        ...


class StaticCluster:
    """A fixed membership: this node plus the configured peers, all assumed alive."""

    def __init__(self, self_url: str, peers: tuple[str, ...], keys: SidKeys) -> None:
        self._self_url = self_url
        self._self_tag = node_tag(keys, self_url)
        self._by_tag: dict[str, MemberRef] = {}
        for url in peers:
            if url == self_url or url.startswith("dns+"):
                continue
            tag = node_tag(keys, url)
            if tag in self._by_tag or tag == self._self_tag:
                raise ValueError(f"node tag collision between {url} and another member")
            self._by_tag[tag] = MemberRef(url=url, alive=True)
        self._urls = frozenset(m.url for m in self._by_tag.values())

    @property
    def self_url(self) -> str:
        return self._self_url

    @property
    def self_tag(self) -> str:
        return self._self_tag

    @property
    def peer_urls(self) -> frozenset[str]:
        return self._urls

    def member_by_tag(self, tag: str) -> MemberRef | None:
        return self._by_tag.get(tag)

    def directory_owner(self, sid: str) -> str | None:
        return None

    def is_tombstoned(self, sid: str) -> bool:
        return False

    def is_live_member(self, url: str) -> bool:
        return url in self._urls

    def live_peers(self) -> list[str]:
        return sorted(self._urls)

    def reached_indirectly(self, url: str) -> bool:
        return False
