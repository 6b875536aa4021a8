"""Shared test helpers. ``require_binary``: a test that needs a system binary skips when it is
missing, but fails when the ``CI`` environment variable is set (CI must run everything)."""

from __future__ import annotations

import os

import pytest

from tests.harness.balancers import binary_for


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
