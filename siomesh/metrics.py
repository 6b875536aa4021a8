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

#: Help text of the counters users look at first; every other counter is exported too, as
#: ``siomesh_<name>``, with a generic help text (status and metrics always show the same set).
_HELP = {
    "forwarded": "Engine.IO requests forwarded to their owner",
    "forward_errors": "forwards that failed (owner unreachable or lost); answered 400",
    "forward_lost": "forwards sent whose owner never answered (link broke, or timeout)",
    "rejected": "requests answered 400 without a hop",
    "forwarded_in": "requests forwarded to this node by peers and served here",
    "forward_answers_lost": "forwarded polls answered as their forwarder went away",
    "links_refused": "peer link offers refused (bad signature, recipient, time or nonce)",
    "link_protocol_errors": "peer links closed on a protocol error (bad MAC, replay, garbage)",
    "link_dial_failures": "peer links that could not be dialled",
    "gossip_dropped": "gossip messages dropped because no link could take them",
    "adapter_gap_messages": "adapter messages that could not be delivered (clients resynced)",
    "adapter_resync_disconnects": "clients disconnected because adapter messages were lost",
}
#: Values that go up and down (open now), exported as gauges.
_GAUGES = {
    "relayed_websockets": "WebSockets this node relays for another owner, open now",
    "links_open": "peer links open now (both directions)",
    "adapter_queued": "adapter messages waiting for a peer's acknowledgement",
    "gossip_local_health": "Lifeguard local health score (0: healthy; probes slowed by 1 + score)",
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
        for key in sorted(stats):
            value = stats[key]
            if key in _GAUGES:
                yield GaugeMetricFamily(f"siomesh_{key}", _GAUGES[key], value=value)
            else:
                help_text = _HELP.get(key, key.replace("_", " "))
                yield CounterMetricFamily(f"siomesh_{key}", help_text, value=value)
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
