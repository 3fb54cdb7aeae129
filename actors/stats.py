"""Per-node counters, shared by the node's actors and read by ``status``.

Each counter is written by few threads and read by the status handler; a lock keeps
increments exact (uncontended, it costs well under a microsecond).
"""

from __future__ import annotations

import threading
import time
from collections import Counter


class Stats:
    """Named integer counters (``puts.ok``, ``read_repairs``...)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def set(self, name: str, value: int) -> None:
        """A gauge: the current value of something (not a running count)."""
        with self._lock:
            self._counts[name] = value

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))


class WallClock:
    """The node's wall clock: ``time.time()`` plus an injected skew (a clock fault)."""

    __slots__ = ("skew",)

    def __init__(self, skew: float = 0.0) -> None:
        self.skew = skew

    def now(self) -> float:
        return time.time() + self.skew
