"""The node's current view of the cluster: the ring and which members are up.

The gossiper is its only writer; coordinators and the status handler read it. Updates
replace whole immutable values (one attribute assignment), so readers never lock and
never see half an update.
"""

from __future__ import annotations

from collections.abc import Mapping

from .ring import Ring

UP, DOWN, LEAVING, LEFT = "up", "down", "leaving", "left"


class Membership:
    """Ring + member states as one node sees them."""

    def __init__(self, name: str, ring: Ring) -> None:
        self.name = name
        self.ring = ring
        self._states: Mapping[str, str] = {node: (UP if node == name else DOWN) for node in ring.nodes}
        self._down: frozenset[str] = frozenset(n for n, s in self._states.items() if s != UP)

    @property
    def states(self) -> dict[str, str]:
        return dict(self._states)

    @property
    def down(self) -> frozenset[str]:
        return self._down

    def publish(self, states: Mapping[str, str]) -> None:
        states = dict(states)
        states[self.name] = UP
        self._down = frozenset(n for n, s in states.items() if s != UP)
        self._states = states

    def preference_list(self, key: str, n: int) -> list[tuple[str, str | None]]:
        """Where a request for ``key`` goes now: healthy primaries, fallbacks for down ones."""
        return self.ring.preference_list(key, n, self._down)

    def all_up(self) -> bool:
        return not self._down
