"""The node's current view of the cluster: the ring and the state of every member.

The gossiper is its only writer; coordinators, the repairer and the status handler
read it. Updates replace whole immutable values (one attribute assignment each), so
readers never lock and never see half an update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .ring import Ring

UP, DOWN, LEAVING, LEFT = "up", "down", "leaving", "left"


class Membership:
    """Ring (with its version) + member states, as one node sees them."""

    def __init__(self, name: str, ring: Ring, ring_version: int = 1) -> None:
        self.name = name
        self.ring = ring
        self.ring_version = ring_version
        self.buckets: Mapping[str, Any] = {}       # name -> messages.BucketProps, replaced whole on change
        self._states: Mapping[str, str] = {node: (UP if node == name else DOWN) for node in ring.nodes}
        self._down: frozenset[str] = frozenset(n for n, s in self._states.items() if s != UP)

    @property
    def states(self) -> dict[str, str]:
        return dict(self._states)

    @property
    def down(self) -> frozenset[str]:
        return self._down

    def is_up(self, node: str) -> bool:
        return node not in self._down and self._states.get(node) in (UP, LEAVING)

    def publish(self, states: Mapping[str, str]) -> None:
        states = dict(states)
        states.setdefault(self.name, UP)
        self._down = frozenset(n for n, s in states.items() if s not in (UP, LEAVING))
        self._states = states

    def set_ring(self, ring: Ring, version: int) -> None:
        self.ring = ring
        self.ring_version = version

    def preference_list(self, key: str, n: int) -> list[tuple[str, str | None]]:
        """Where a request for ``key`` goes now: healthy primaries, fallbacks for down ones."""
        return self.ring.preference_list(key, min(n, len(self.ring.nodes)), self._down)

    def primaries(self, key: str, n: int) -> list[str]:
        return self.ring.primaries(key, min(n, len(self.ring.nodes)))

    def all_up(self) -> bool:
        return not self._down
