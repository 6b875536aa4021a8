"""The upgrade forecast: a kind of client is held until it has shown, over enough sessions,
that it never upgrades; one upgrade puts it back on hold; memory is bounded."""

from __future__ import annotations

import pytest

from siomesh.upgrade_forecast import UpgradeForecast

PY = "Python/3.11 aiohttp/3.14.5"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Chrome/156"


def test_unknown_kinds_and_thin_evidence_are_held() -> None:
    forecast = UpgradeForecast(evidence=8)
    assert forecast.may_upgrade(PY)
    assert forecast.may_upgrade(None)
    for _ in range(7):
        forecast.record(PY, False)
    assert forecast.may_upgrade(PY)  # 7 of 8
    forecast.record(PY, False)
    assert not forecast.may_upgrade(PY)
    assert forecast.may_upgrade(BROWSER)


def test_one_upgrade_holds_the_kind_again_until_it_is_forgotten() -> None:
    forecast = UpgradeForecast(memory=16, evidence=8)
    for _ in range(10):
        forecast.record(PY, False)
    assert not forecast.may_upgrade(PY)
    forecast.record(PY, True)  # a wrong forecast: its WebSocket landed elsewhere
    assert forecast.may_upgrade(PY)
    for _ in range(15):
        forecast.record(PY, False)
    assert forecast.may_upgrade(PY)  # still remembered (16 outcomes)
    forecast.record(PY, False)
    assert not forecast.may_upgrade(PY)


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
