"""Per-node counters, shared by the node's actors and read by ``status``.

Every put and get bumps a few counters, from several threads. Each thread counts in its
own ``Counter`` (no lock on the hot path: with a lock, counting was 3% of a node's CPU
under load); ``snapshot`` adds them up. Gauges (``set``) are rare and kept under a lock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter


class Stats:
    """Named integer counters (``puts.ok``, ``read_repairs``...) and gauges."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._threads: list[Counter[str]] = []      # one per thread that ever counted
        self._gauges: dict[str, int] = {}

    def incr(self, name: str, amount: int = 1) -> None:
        try:
            counts = self._local.counts
        except AttributeError:
            counts = self._local.counts = Counter()
            with self._lock:
                self._threads.append(counts)
        counts[name] += amount

    def set(self, name: str, value: int) -> None:
        """A gauge: the current value of something (not a running count)."""
        with self._lock:
            self._gauges[name] = value

    def get(self, name: str) -> int:
        return self.snapshot().get(name, 0)

    def snapshot(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        with self._lock:
            for counts in self._threads:
                total.update(dict(counts))          # dict() copies in one step, safe beside its thread
            merged = dict(total)
            merged.update(self._gauges)
        return dict(sorted(merged.items()))


class WallClock:
    """The node's wall clock: ``time.time()`` plus an injected skew (a clock fault)."""

    __slots__ = ("skew",)

    def __init__(self, skew: float = 0.0) -> None:
        self.skew = skew

    def now(self) -> float:
        return time.time() + self.skew
