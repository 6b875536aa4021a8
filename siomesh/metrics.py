"""Prometheus metrics for one node, read at scrape time from the node's own counters.

Nothing is updated on the request path but plain integer counters in ``SioMesh.stats``
(declared, with their help text and type, in :mod:`siomesh.counters`); this
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

from .counters import COUNTERS

__all__ = ["MeshCollector", "render"]


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
            counter = COUNTERS.get(key)
            help_text = counter.meaning if counter is not None else key.replace("_", " ")
            if counter is not None and counter.gauge:
                yield GaugeMetricFamily(f"siomesh_{key}", help_text, value=value)
            else:
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
