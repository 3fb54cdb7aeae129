"""Phi accrual failure detection (Hayashibara et al.; as Cassandra uses it).

For each peer we keep the intervals between observed heartbeat increments. The
suspicion level ``phi`` after ``delta`` seconds of silence is ``-log10(P(a gap this
long))``; with exponentially distributed gaps that is ``delta / mean * log10(e)``. A
peer is convicted when phi exceeds a threshold (Cassandra's default is 8): the
detector adapts to how often heartbeats really arrive instead of using a fixed timeout.
"""

from __future__ import annotations

import math
from collections import deque

LOG10_E = math.log10(math.e)
OUTAGE_PHI = 4.0    # a gap that took the peer's phi past this is an outage, not an arrival interval


class PhiDetector:
    """Inter-arrival statistics for one peer."""

    __slots__ = ("_intervals", "_sum", "_last", "_prior")

    def __init__(self, prior_interval: float, window: int = 100) -> None:
        self._intervals: deque[float] = deque(maxlen=window)
        self._sum = 0.0
        self._last: float | None = None
        self._prior = prior_interval

    @property
    def last(self) -> float | None:
        return self._last

    def heartbeat(self, now: float) -> None:
        """A new heartbeat of the peer was observed at ``now``.

        A gap long enough to take phi past ``OUTAGE_PHI`` (half of Cassandra's threshold) is not
        recorded: it was a partition or a pause, not how often heartbeats arrive, and counting it
        would convict the same peer later at its next outage (Cassandra ignores intervals above
        ``fd_max_interval`` for this reason). Gossip that slows step by step is still learnt."""
        if self._last is not None:
            interval = now - self._last
            if interval / self.mean() * LOG10_E > OUTAGE_PHI:
                self._last = now
                return
            if len(self._intervals) == self._intervals.maxlen:
                self._sum -= self._intervals[0]
            self._intervals.append(interval)
            self._sum += interval
        self._last = now

    def excuse(self, gap: float) -> None:
        """Shift the last arrival forward by ``gap``: a pause of the observer is not the peer's silence."""
        if self._last is not None:
            self._last += gap

    def mean(self) -> float:
        """Mean gap, never below the configured gossip interval (bursts must not make us jumpy)."""
        if not self._intervals:
            return self._prior
        return max(self._sum / len(self._intervals), self._prior)

    def phi(self, now: float) -> float:
        if self._last is None:
            return math.inf
        return max(0.0, now - self._last) / self.mean() * LOG10_E
