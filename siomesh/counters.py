"""Every counter siomesh keeps, declared once, and :class:`Stats`, the only way to change one.

A counter's *name* is what ``/_siomesh/status`` shows under ``stats`` and what
``/_siomesh/metrics`` exports as ``siomesh_<name>`` (a Prometheus counter, or a gauge for the
values that go down too). Each is declared below with what it means and whether it signals a
*fault*: a value that rises means something was lost, refused or late, and is worth an alert
(the others measure traffic and normal events). PURE: no I/O, no clock.

Counters live in a few *scopes*, one :class:`Stats` each; a scope's counters are named with its
prefix in status and metrics, and without it in code (``adapter.stats.bump("received")`` is
``adapter_received``):

``node``
    forwarding, links, gossip transport, takeover, recovery, drain, self-checks
    (``MeshNode.stats``, shared by the parts of one node)
``adapter``
    the adapter's receiving side and queue (``MeshManager.stats``), prefix ``adapter_``
``adapter_peer``
    one per peer channel of the adapter (``PeerChannel.stats``), summed over peers in status,
    prefix ``adapter_``
``membership``
    the gossip protocol's membership figures (pure core), prefix ``gossip_``

Naming a counter that is not declared raises :class:`UndeclaredCounter` (a typo is caught at
once; ``tests/unit/test_counters.py`` checks every name in the package statically, and that
every declared counter is used).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["COUNTERS", "SCOPES", "Counter", "Scope", "Stats", "UndeclaredCounter"]

Scope = Literal["node", "adapter", "adapter_peer", "membership"]

#: scope -> the prefix its counters carry in status and metrics
SCOPES: Mapping[Scope, str] = {
    "node": "",
    "adapter": "adapter_",
    "adapter_peer": "adapter_",
    "membership": "gossip_",
}


@dataclass(frozen=True)
class Counter:
    """One counter: ``name`` as status and metrics show it, what it means, whether a rise
    signals a fault, and whether it is a gauge (a value now, that goes down too)."""

    name: str
    scope: Scope
    meaning: str
    fault: bool = False
    gauge: bool = False

    @property
    def key(self) -> str:
        """The name within its scope (what code passes to :meth:`Stats.bump`)."""
        return self.name[len(SCOPES[self.scope]) :]


def _declare(*counters: Counter) -> dict[str, Counter]:
    table: dict[str, Counter] = {}
    for counter in counters:
        if counter.name in table or not counter.name.startswith(SCOPES[counter.scope]):
            raise ValueError(f"counter {counter.name!r} is declared twice or misnamed")
        table[counter.name] = counter
    return table


_N: Scope = "node"
_A: Scope = "adapter"
_P: Scope = "adapter_peer"
_M: Scope = "membership"

#: every counter, by name (the order is the documentation's)
COUNTERS: Mapping[str, Counter] = _declare(
    # -- forwarding (siomesh.node, siomesh.forward, siomesh.middleware) --
    Counter("forwarded", _N, "Engine.IO requests forwarded to their owner and answered"),
    Counter(
        "forward_errors",
        _N,
        "forwards that failed (owner unreachable or lost); answered 400",
        fault=True,
    ),
    Counter(
        "forward_lost",
        _N,
        "forwards sent whose owner never answered (link broke, or timeout)",
        fault=True,
    ),
    Counter("forward_cancelled", _N, "forwarded long-polls cancelled: their client went away"),
    Counter("abandoned_polls", _N, "forwarded polls whose client left before the answer came"),
    Counter("polls_released", _N, "forwarded long-polls ended early because this node drains"),
    Counter("forwarded_via", _N, "requests a peer could not forward, forwarded on from here"),
    Counter("rejected", _N, "requests answered 400 without a hop (owner gone or sid unknown)"),
    Counter("forwarded_in", _N, "requests forwarded to this node by peers and served here"),
    Counter("relayed_in", _N, "WebSockets relayed to this node by peers and served here"),
    Counter(
        "forward_answers_lost",
        _N,
        "forwarded polls answered as their forwarder went away",
        fault=True,
    ),
    Counter(
        "relayed_websockets",
        _N,
        "WebSockets this node relays for another owner, open now",
        gauge=True,
    ),
    Counter(
        "upgrades_refused_draining",
        _N,
        "WebSocket upgrades refused while draining (the client stays on polling)",
    ),
    # -- drain (siomesh.node) --
    Counter("drained_sessions", _N, "sessions dropped at drain (their clients reconnect)"),
    Counter(
        "drain_calls_cut",
        _N,
        "sessions dropped at drain before their last call was answered",
        fault=True,
    ),
    # -- peer links (siomesh.links) --
    Counter("links_open", _N, "peer links open now (both directions)", gauge=True),
    Counter("links_dialled", _N, "peer links this node dialled"),
    Counter("links_accepted", _N, "peer links this node accepted"),
    Counter(
        "links_refused",
        _N,
        "peer link offers refused (bad signature, recipient, time, nonce)",
        fault=True,
    ),
    Counter("link_dial_failures", _N, "peer links that could not be dialled", fault=True),
    Counter(
        "link_protocol_errors",
        _N,
        "peer links closed on a protocol error (bad MAC, replay)",
        fault=True,
    ),
    Counter("link_buffer_full", _N, "frames refused: the link's send buffer was full", fault=True),
    Counter(
        "link_pending_dropped",
        _N,
        "frames dropped while waiting for a link that never came",
        fault=True,
    ),
    Counter("link_frames_sent", _N, "frames sent on peer links"),
    Counter(
        "link_messages_sent",
        _N,
        "WebSocket messages sent on peer links (a BATCH carries several frames in one)",
    ),
    Counter("link_frames_received", _N, "frames received on peer links"),
    Counter("link_bytes_sent", _N, "payload bytes sent on peer links"),
    Counter("link_bytes_received", _N, "bytes received on peer links"),
    Counter("link_frames_unhandled", _N, "frames of a kind this node does not serve, dropped"),
    Counter(
        "link_handler_errors", _N, "streams whose handler raised (the link stays up)", fault=True
    ),
    # -- gossip transport (siomesh.runtime.gossip, siomesh.local_peers) --
    Counter("gossip_messages_sent", _N, "gossip messages sent"),
    Counter("gossip_messages_received", _N, "gossip messages received"),
    Counter("gossip_bytes_sent", _N, "gossip bytes sent"),
    Counter("gossip_bytes_received", _N, "gossip bytes received"),
    Counter("gossip_dropped", _N, "gossip messages dropped: no link could take them", fault=True),
    Counter(
        "peers_reached_indirectly",
        _N,
        "times a live peer became reachable only through another member (a partition?)",
        fault=True,
    ),
    Counter(
        "quiet_links_closed",
        _N,
        "silent data links closed because their peer was reachable only indirectly",
    ),
    Counter(
        "forwarded_via_first",
        _N,
        "requests sent through a third member at once: their owner is reached only indirectly",
    ),
    Counter("gossip_bad_messages", _N, "gossip messages that did not decode, dropped", fault=True),
    Counter("local_knocks", _N, "gossip hellos sent to worker processes found on this machine"),
    # -- upgrade takeover (siomesh.takeover) --
    Counter("takeovers", _N, "sessions taken over by the node their WebSocket reached"),
    Counter("takeover_fallbacks", _N, "WebSockets not taken over, relayed to the owner instead"),
    Counter("sessions_handed_off", _N, "sessions this node handed to the node their WebSocket hit"),
    Counter(
        "takeover_lost",
        _N,
        "packets or sessions lost in a takeover (client reconnects)",
        fault=True,
    ),
    Counter("takeover_holds_skipped", _N, "sessions not held: their kind of client never upgrades"),
    Counter("takeover_mispredicted", _N, "sessions not held that upgraded elsewhere after all"),
    # -- connection state recovery (siomesh.recovery) --
    Counter("recovered", _N, "sessions restored (recovery requests served)"),
    Counter("recovery_kept", _N, "sessions kept for recovery after their client went"),
    Counter(
        "recovery_misses",
        _N,
        "recovery asked with a genuine pid that nobody could restore",
        fault=True,
    ),
    Counter("recovery_replayed", _N, "events replayed to recovered sessions"),
    Counter("recovery_expired", _N, "kept sessions that expired unclaimed"),
    Counter("recovery_handed_off", _N, "kept sessions handed to a peer at drain"),
    Counter(
        "recovery_waited_handoffs",
        _N,
        "recoveries that found nothing, waited for a draining peer's hand-off, and got it",
    ),
    Counter(
        "recovery_handoff_failed",
        _N,
        "kept sessions no peer adopted in time at drain (their clients reconnect unrecovered)",
        fault=True,
    ),
    Counter("recovery_forged_pids", _N, "recovery requests whose pid does not verify", fault=True),
    Counter("recovery_refused", _N, "kept sessions not given (bad offset, other namespace): kept"),
    Counter("recovery_fetches_sent", _N, "recovery calls this node sent to peers"),
    Counter("recovery_sessions", _N, "sessions kept for recovery now", gauge=True),
    Counter("recovery_log_events", _N, "events in the recovery log now", gauge=True),
    Counter("recovery_log_bytes", _N, "bytes of the recovery log now", gauge=True),
    # -- self-checks at startup and after (siomesh.selfcheck) --
    Counter(
        "selfcheck_node_url_unreachable",
        _N,
        "1 when node_url does not reach this process (peers cannot forward to it)",
        fault=True,
        gauge=True,
    ),
    Counter(
        "selfcheck_node_url_shared",
        _N,
        "1 when other processes answer at this node_url (e.g. uvicorn --workers)",
        fault=True,
        gauge=True,
    ),
    Counter("seeds_unreachable", _N, "seeds that cannot be reached now", True, gauge=True),
    # -- the adapter's receiving side (siomesh.adapter.inbound, .manager) --
    Counter("adapter_received", _A, "adapter messages received from peers (not duplicates)"),
    Counter("adapter_duplicates", _A, "adapter messages received again and skipped"),
    Counter("adapter_bad_messages", _A, "malformed adapter messages or calls, skipped", fault=True),
    Counter(
        "adapter_gaps_received", _A, "notices from peers that messages here were lost", fault=True
    ),
    Counter(
        "adapter_resync_disconnects",
        _A,
        "clients disconnected: adapter messages were lost",
        fault=True,
    ),
    Counter(
        "adapter_causal_timeouts",
        _A,
        "emits that stopped waiting for a sender's stable report",
        fault=True,
    ),
    Counter(
        "adapter_turn_timeouts",
        _A,
        "local deliveries that stopped waiting for peers' messages received before them",
        fault=True,
    ),
    Counter(
        "adapter_queued", _A, "adapter messages waiting for a peer's acknowledgement", gauge=True
    ),
    # -- the adapter's channels, summed over peers (siomesh.adapter.channel) --
    Counter("adapter_sent", _P, "adapter messages sent to peers"),
    Counter("adapter_resent", _P, "adapter messages sent again after a link broke"),
    Counter("adapter_acked", _P, "adapter messages acknowledged by peers"),
    Counter(
        "adapter_gap_messages",
        _P,
        "adapter messages that could not be delivered (resynced)",
        fault=True,
    ),
    Counter(
        "adapter_gaps", _P, "gap records made (runs of undeliverable adapter messages)", fault=True
    ),
    Counter(
        "adapter_stalls", _P, "episodes of 5 s without an acknowledgement from a peer", fault=True
    ),
    Counter(
        "adapter_order_timeouts", _P, "emits that returned before a peer applied them", fault=True
    ),
    Counter(
        "adapter_lagging", _P, "times a peer was marked lagging (emits stop waiting)", fault=True
    ),
    # -- gossip membership (siomesh.protocol) --
    Counter("gossip_suspected", _M, "suspicions of other members this node raised"),
    Counter(
        "gossip_refuted", _M, "suspicions of this node it refuted (false suspicions)", fault=True
    ),
    Counter("gossip_declared_dead", _M, "members declared dead", fault=True),
    Counter(
        "gossip_local_health",
        _M,
        "Lifeguard local health score (0: healthy; probes slowed by 1 + score)",
        gauge=True,
    ),
)


class UndeclaredCounter(KeyError):
    """A counter name that :data:`COUNTERS` does not declare for the scope."""


class Stats(Mapping[str, int]):
    """The counters of one scope, all declared, each starting at 0.

    Reads are a plain mapping (``stats["received"]``, names without the scope's prefix);
    changes go through :meth:`bump` (add) and :meth:`set` (a gauge, or a flag), which refuse an
    undeclared name. :meth:`snapshot` gives the names as status and metrics show them.
    """

    __slots__ = ("_prefix", "_scope", "_values")

    def __init__(self, scope: Scope = "node") -> None:
        self._scope = scope
        self._prefix = SCOPES[scope]
        self._values = {c.key: 0 for c in COUNTERS.values() if c.scope == scope}

    def bump(self, name: str, n: int = 1) -> None:
        """Add ``n`` (default 1) to counter ``name``."""
        values = self._values
        if name not in values:
            raise UndeclaredCounter(f"{self._scope} counter {name!r} is not declared")
        values[name] += n

    def set(self, name: str, value: int) -> None:
        """Make counter ``name`` (a gauge or a flag) ``value``."""
        if name not in self._values:
            raise UndeclaredCounter(f"{self._scope} counter {name!r} is not declared")
        self._values[name] = value

    def snapshot(self) -> dict[str, int]:
        """Every counter of this scope, named as status and metrics show it."""
        prefix = self._prefix
        return {prefix + key: value for key, value in self._values.items()}

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Stats({self._scope!r}, {self._values!r})"
