"""A virtual clock for driving pure protocol code in tests."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """Virtual seconds. Starts at ``start`` and moves only when told; never backwards."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0); return the new time."""
        if seconds < 0:
            raise ValueError("a FakeClock cannot go backwards")
        self._now += seconds
        return self._now

    def set(self, t: float) -> None:
        """Jump to ``t`` (>= now)."""
        if t < self._now:
            raise ValueError(f"cannot move a FakeClock back from {self._now} to {t}")
        self._now = t
