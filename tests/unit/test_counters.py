"""Every counter is declared once (siomesh/counters.py), every declared one is used, and a
name that is not declared is refused."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from siomesh.counters import COUNTERS, SCOPES, Stats, UndeclaredCounter

PACKAGE = Path(__file__).resolve().parents[2] / "siomesh"


def _names_counted() -> dict[str, list[str]]:
    """Every literal name passed to ``.bump(...)`` or ``.set(...)`` in the package, with
    where; and ``<dynamic>`` for a call whose name is not a literal."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "counters.py" and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("bump", "set")
                and node.args
            ):
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.setdefault(first.value, []).append(where)
            elif node.func.attr == "bump":
                found.setdefault("<dynamic>", []).append(where)
    return found


def test_every_counter_used_in_the_package_is_declared() -> None:
    keys = {counter.key for counter in COUNTERS.values()}
    used = _names_counted()
    undeclared = {name: where for name, where in used.items() if name not in keys}
    assert not undeclared, f"declare these in siomesh/counters.py: {undeclared}"


def test_every_declared_counter_is_used() -> None:
    used = _names_counted()
    unused = [c.name for c in COUNTERS.values() if c.key not in used]
    assert not unused, f"declared but never counted (remove or count them): {unused}"


def test_every_declared_counter_has_a_meaning_and_its_scope_prefix() -> None:
    for counter in COUNTERS.values():
        assert counter.meaning and counter.name.startswith(SCOPES[counter.scope])
        assert counter.name == SCOPES[counter.scope] + counter.key


def test_stats_refuses_an_undeclared_name_and_shows_every_counter_of_its_scope() -> None:
    stats = Stats("adapter")
    with pytest.raises(UndeclaredCounter):
        stats.bump("recieved")
    with pytest.raises(UndeclaredCounter):
        stats.set("forwarded", 1)  # a node counter, not the adapter's
    stats.bump("received")
    stats.bump("received", 2)
    stats.set("queued", 7)
    assert stats["received"] == 3 and stats["duplicates"] == 0
    snapshot = stats.snapshot()
    assert snapshot["adapter_received"] == 3 and snapshot["adapter_queued"] == 7
    assert set(snapshot) == {c.name for c in COUNTERS.values() if c.scope == "adapter"}


def test_status_and_metrics_show_only_declared_counters() -> None:
    from siomesh.metrics import MeshCollector, render

    stats = Stats("node")
    stats.bump("forward_lost")
    stats.set("seeds_unreachable", 2)
    collector = MeshCollector(
        stats=stats.snapshot, members=dict, directory=dict, sessions=lambda: 0
    )
    text = render(collector).decode()
    assert "siomesh_forward_lost_total 1.0" in text
    assert "# HELP siomesh_forward_lost_total " + COUNTERS["forward_lost"].meaning in text
    assert "# TYPE siomesh_seeds_unreachable gauge" in text
