"""The node's current view of the cluster: the ring and the state of every member.

The gossiper is its only writer; coordinators, the repairer and the status handler
read it. Updates replace whole immutable values (one attribute assignment each), so
readers never lock and never see half an update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import options
from .messages import BucketProps
from .ring import Ring

UP, DOWN, LEAVING, LEFT = "up", "down", "leaving", "left"


class Membership:
    """Ring (with its version) + member states + buckets, as one node sees them.

    ``defaults``: the default bucket's properties (the cluster's n, r, w)."""

    def __init__(self, name: str, ring: Ring, ring_version: int = 1, defaults: BucketProps | None = None) -> None:
        self.name = name
        self.ring = ring
        self.ring_version = ring_version
        self.defaults = defaults or BucketProps("", "siblings", 3, 2, 2)
        self.buckets: Mapping[str, BucketProps] = {}   # name -> BucketProps, replaced whole on change
        self._states: Mapping[str, str] = {node: (UP if node == name else DOWN) for node in ring.nodes}
        self.incarnations: Mapping[str, int] = {}      # node -> the incarnation gossip last told of it
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

    def bucket(self, name: Any) -> BucketProps | None:
        """A bucket's properties (see ``options.bucket_props``)."""
        return options.bucket_props(self.buckets, self.defaults, name)

    def n_for(self, stored_key: str) -> int | None:
        """How many replicas hold ``stored_key`` (its bucket's n); None while the bucket is unknown here."""
        return options.n_for_key(self.buckets, self.defaults, stored_key)

    def largest_n(self) -> int:
        return options.largest_n(self.buckets, self.defaults)
