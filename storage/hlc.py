"""Hybrid logical clocks (Kulkarni et al., 2014): the order of last-write-wins.

A `Timestamp` is ``(wall_ms, logical, node)``. Named tuples compare
lexicographically, and that order *is* the last-write-wins order: the greater
timestamp wins, and ``node`` breaks the tie between two nodes that stamped the
same ``(wall_ms, logical)``, so two different writes never tie.

A `HybridClock` remembers the greatest ``(wall_ms, logical)`` pair it has issued
or observed. `HybridClock.now` (a local event) reads the wall clock: if the wall
clock is ahead, it issues ``(wall, 0)``; otherwise it keeps the remembered
``wall_ms`` and counts up ``logical``. So a clock never goes backwards, even when
its wall clock does, and every timestamp it issues is strictly greater than every
timestamp it issued or observed before.

`HybridClock.observe` merges a timestamp received from elsewhere without issuing
one; `HybridClock.after` is observe-then-now, which is exactly the HLC receive
rule. A write that was made *after seeing* another write therefore gets a greater
timestamp, even when the writer's wall clock is behind: a node whose clock runs an
hour fast cannot win the conflicts with writes that causally follow its own. (It
still wins against writes that never saw it; that is what LWW means.)

Observing a timestamp from the future drags the clock's ``wall_ms`` forward with
it; the clock then counts ``logical`` until the wall clock catches up. If
``logical`` would pass 65535 (the limit `pack` needs), the clock borrows one
millisecond instead: timestamps stay strictly increasing and packable.

`pack` turns ``(wall_ms, logical)`` into one integer that orders the same way,
for compact version-vector entries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["MAX_LOGICAL", "HybridClock", "Timestamp", "pack"]

MAX_LOGICAL = 0xFFFF
"""The largest ``logical`` component; `pack` keeps it in 16 bits."""


class Timestamp(NamedTuple):
    """A hybrid logical timestamp; tuple order is the last-write-wins order."""

    wall_ms: int
    """Milliseconds since the epoch, as the issuing clock knew them (never below its wall clock)."""
    logical: int
    """Counts events within one ``wall_ms`` (0..65535)."""
    node: str
    """The issuing node: the tie-break between equal ``(wall_ms, logical)`` pairs."""


def _check(ts: Timestamp) -> None:
    """Refuse a malformed timestamp (it may come from another node)."""
    if not (isinstance(ts, tuple) and len(ts) == 3):
        raise ValueError(f"not a timestamp: {ts!r}")
    wall_ms, logical, node = ts
    if type(wall_ms) is not int or wall_ms < 0:
        raise ValueError(f"timestamp wall_ms must be an int >= 0, not {wall_ms!r}")
    if type(logical) is not int or not 0 <= logical <= MAX_LOGICAL:
        raise ValueError(f"timestamp logical must be an int in 0..{MAX_LOGICAL}, not {logical!r}")
    if not isinstance(node, str):
        raise ValueError(f"timestamp node must be a str, not {node!r}")


def pack(ts: Timestamp) -> int:
    """``wall_ms << 16 | logical``: one integer ordered like ``(wall_ms, logical)``."""
    _check(ts)
    return ts.wall_ms << 16 | ts.logical


class HybridClock:
    """A thread-safe hybrid logical clock for one node.

    ``wall`` returns seconds since the epoch (``time.time`` by default); it may be
    skewed or jump backwards on purpose, the clock stays monotonic.
    """

    def __init__(self, node: str, wall: Callable[[], float] = time.time) -> None:
        if not isinstance(node, str):
            raise ValueError(f"node must be a str, not {node!r}")
        self._node = node
        self._wall = wall
        self._lock = threading.Lock()
        self._wall_ms = 0  # the greatest (wall_ms, logical) issued or observed
        self._logical = 0

    @property
    def node(self) -> str:
        """The node name every timestamp of this clock carries."""
        return self._node

    def now(self) -> Timestamp:
        """A new local event: strictly greater than every timestamp issued or observed so far."""
        with self._lock:
            return self._tick()

    def observe(self, ts: Timestamp) -> None:
        """Merge a timestamp received from elsewhere; the next `now` will be greater than it.

        Raises ValueError for a malformed timestamp.
        """
        _check(ts)
        with self._lock:
            self._merge(ts)

    def after(self, ts: Timestamp | None) -> Timestamp:
        """A timestamp strictly greater than ``ts`` (and than everything before): observe, then now."""
        if ts is not None:
            _check(ts)
        with self._lock:
            if ts is not None:
                self._merge(ts)
            return self._tick()

    def _merge(self, ts: Timestamp) -> None:
        self._wall_ms, self._logical = max((self._wall_ms, self._logical), (ts.wall_ms, ts.logical))

    def _tick(self) -> Timestamp:
        physical = int(self._wall() * 1000)
        if physical > self._wall_ms:
            self._wall_ms, self._logical = physical, 0
        elif self._logical < MAX_LOGICAL:
            self._logical += 1
        else:  # 65536 events in one millisecond: borrow the next millisecond
            self._wall_ms, self._logical = self._wall_ms + 1, 0
        return Timestamp(self._wall_ms, self._logical, self._node)
