"""Prometheus metrics for one node, read at scrape time from the node's own counters.

Nothing is updated on the request path but plain integer counters in ``SioMesh.stats``; this
collector turns them (and the cluster view's figures) into Prometheus families when scraped, so
metrics cost nothing between scrapes. One registry per node: several nodes in one process (tests)
do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["MeshCollector", "render"]

_COUNTERS = {
    "forwarded": ("siomesh_forwarded_requests", "Engine.IO requests forwarded to their owner"),
    "forward_errors": (
        "siomesh_forward_errors",
        "forwards that failed (owner unreachable); answered 400",
    ),
    "rejected": ("siomesh_rejected_requests", "requests answered 400 without a hop"),
    "peer_requests": ("siomesh_peer_requests", "verified peer messages received"),
    "peer_rejected": ("siomesh_peer_rejected", "peer messages refused: bad or no signature"),
    "gossip_messages_sent": ("siomesh_gossip_messages_sent", "gossip messages sent"),
    "gossip_messages_received": ("siomesh_gossip_messages_received", "gossip messages received"),
    "gossip_bytes_sent": ("siomesh_gossip_bytes_sent", "gossip bytes sent"),
    "gossip_bytes_received": ("siomesh_gossip_bytes_received", "gossip bytes received"),
}


class MeshCollector(Collector):
    """Collects from ``stats`` (counters), ``members`` (state -> count) and ``directory``
    (origin -> entries), each a callable evaluated at scrape time."""

    def __init__(
        self,
        stats: Callable[[], Mapping[str, int]],
        members: Callable[[], Mapping[str, int]],
        directory: Callable[[], Mapping[str, int]],
        sessions: Callable[[], int],
    ) -> None:
        self._stats = stats
        self._members = members
        self._directory = directory
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for key, (name, help_text) in _COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=stats.get(key, 0))
        members = GaugeMetricFamily("siomesh_members", "cluster members by state", labels=["state"])
        for state, count in sorted(self._members().items()):
            members.add_metric([state], count)
        yield members
        entries = GaugeMetricFamily(
            "siomesh_directory_entries", "directory entries per origin", labels=["origin"]
        )
        for origin, count in sorted(self._directory().items()):
            entries.add_metric([origin], count)
        yield entries
        yield GaugeMetricFamily(
            "siomesh_local_sessions",
            "Engine.IO sessions owned by this node",
            value=self._sessions(),
        )


def render(collector: Any) -> bytes:
    """The Prometheus text exposition of one collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
