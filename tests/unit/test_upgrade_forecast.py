"""The upgrade forecast: a kind of client is held until it has shown, over enough sessions,
that it never upgrades; one upgrade puts it back on hold; memory is bounded."""

from __future__ import annotations

import pytest

from siomesh.upgrade_forecast import UpgradeForecast

PY = "Python/3.11 aiohttp/3.14.5"
KIND = "some-client/1.0"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Chrome/156"


def test_unknown_kinds_and_thin_evidence_are_held() -> None:
    forecast = UpgradeForecast(evidence=8)
    assert forecast.may_upgrade(KIND)
    assert forecast.may_upgrade(None)
    for _ in range(7):
        forecast.record(KIND, False)
    assert forecast.may_upgrade(KIND)  # 7 of 8
    forecast.record(KIND, False)
    assert not forecast.may_upgrade(KIND)
    assert forecast.may_upgrade(BROWSER)


def test_one_upgrade_holds_the_kind_again_until_it_is_forgotten() -> None:
    forecast = UpgradeForecast(memory=16, evidence=8)
    for _ in range(10):
        forecast.record(KIND, False)
    assert not forecast.may_upgrade(KIND)
    forecast.record(KIND, True)  # a wrong forecast: its WebSocket landed elsewhere
    assert forecast.may_upgrade(KIND)
    for _ in range(15):
        forecast.record(KIND, False)
    assert forecast.may_upgrade(KIND)  # still remembered (16 outcomes)
    forecast.record(KIND, False)
    assert not forecast.may_upgrade(KIND)


def test_python_engineios_clients_are_not_held_until_one_of_their_kind_upgrades() -> None:
    """python-socketio's clients upgrade before they send anything, or never: one that polls
    its first packet is polling-only, with no evidence needed. An upgrade recorded for that
    User-Agent (some other client sending it) puts the kind back on hold."""
    forecast = UpgradeForecast(memory=4, evidence=2)
    assert not forecast.may_upgrade(PY)
    assert not forecast.may_upgrade("python-requests/2.32.3")
    assert forecast.may_upgrade("Mozilla/5.0 Python/3.11 aiohttp/3.14.5")  # not at the start
    forecast.record(PY, False)
    assert not forecast.may_upgrade(PY)
    forecast.record(PY, True)
    assert forecast.may_upgrade(PY)
    for _ in range(4):
        forecast.record(PY, False)
    assert not forecast.may_upgrade(PY)  # the upgrade is forgotten


def test_a_kind_that_upgrades_stays_held() -> None:
    forecast = UpgradeForecast()
    for i in range(40):
        forecast.record(BROWSER, i % 3 == 0)
    assert forecast.may_upgrade(BROWSER)


def test_memory_is_bounded() -> None:
    forecast = UpgradeForecast(kinds=4, memory=2, evidence=1)
    for i in range(100):
        forecast.record(f"agent {i}" + "x" * 1000, False)
    assert len(forecast) == 4
    # cut to 200 characters: two agents that differ only after that are one kind
    forecast.record("a" * 200 + "1", False)
    assert not forecast.may_upgrade("a" * 200 + "2")


def test_evidence_must_fit_memory() -> None:
    with pytest.raises(ValueError):
        UpgradeForecast(memory=4, evidence=5)
