"""RateLimitedLog: say a problem out loud once per cause, then at most once a minute.

Misconfigurations (a secret mismatch, an unreachable seed, a wrong ``node_url``) repeat on every
probe; logging each would bury the log, logging none leaves users guessing. The first occurrence
of each *key* is logged at once; repeats within ``interval`` seconds are counted and reported
with the next line for that key. Use from one event loop (not thread-safe). Memory is one entry
per distinct key, capped at ``max_keys`` (the oldest is forgotten first).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, max_keys: int = 1024
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._last: OrderedDict[Hashable, list[float]] = OrderedDict()  # key -> [time, repeats]

    def warning(self, key: Hashable, message: str, *args: Any) -> bool:
        """Log ``message % args`` at WARNING unless ``key`` was logged within ``interval``;
        True if it was logged now."""
        return self.log(logging.WARNING, key, message, *args)

    def log(self, level: int, key: Hashable, message: str, *args: Any) -> bool:
        now = time.monotonic()
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False
        repeats = int(entry[1]) if entry is not None else 0
        self._last[key] = [now, 0]
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        if repeats:
            message += " (%d more times since the last report)"
            args = (*args, repeats)
        self.logger.log(level, message, *args)
        return True
