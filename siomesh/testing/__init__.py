"""Test doubles for the gossip core: a virtual clock, a fake network, a cluster simulator.

Shipped with siomesh so that users can simulate their own cluster sizes and settings
(see docs/simulator.md). Nothing here touches real time, sockets or asyncio.
"""

from __future__ import annotations

from siomesh.testing.clock import FakeClock
from siomesh.testing.network import FakeNetwork, LinkStats
from siomesh.testing.simulator import SimNode, Simulator

__all__ = ["FakeClock", "FakeNetwork", "LinkStats", "SimNode", "Simulator"]
