"""Shared test helpers. ``require_binary``: a test that needs a system binary skips when it is
missing, but fails when the ``CI`` environment variable is set (CI must run everything).

The ``serial`` mark: ``scripts/test`` runs the suite in two passes, everything else on two
pytest-xdist workers, then the ``serial`` tests alone, one at a time. They are the fault tests
whose contract is timed against the cluster's own clocks (drain and recovery windows, freezes
and cuts that outlast a suspicion timeout, in-order delivery while a node dies): they already
run beside CPU burners of their own, but a second cluster of another test starting and
stopping beside them is load no user's node sees while it drains, and once made a client miss
its recovery window (a rolling restart beside the rest of the suite on two cores).
"""

from __future__ import annotations

import os

import pytest

from tests.harness.balancers import binary_for

#: test modules marked ``serial`` (see above); by module, so a new test there is serial too
SERIAL_MODULES = frozenset(
    {
        "test_adapter_failures",
        "test_adapter_order",
        "test_drain",
        "test_frozen_node",
        "test_owner_routing",
        "test_partition",
        "test_recovery",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)


def require_binary(name: str) -> str:
    """Full path of ``name`` (a balancer key such as ``"apache"`` or a binary name); skip the
    test when it is not installed, fail instead under ``CI``."""
    path = binary_for(name)
    if path is None:
        message = f"{name} is not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set: every integration test must run)")
        pytest.skip(message)
    return path
