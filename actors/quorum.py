"""Quorum arithmetic, as a pure core with no I/O.

Options are resolved once, in a fixed order: the request's value, else the cluster
default; names (``one``, ``quorum``, ``all``) become integers against ``n``; the result is
validated with one specific error per violation. The tallies below decide, from the
replies seen so far, whether a request has succeeded, has failed for good, or must wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from storage import objects
from storage.codec import decode_object

from .errors import QuorumValueError

NAMED = ("one", "quorum", "all")


def resolve(name: str, value: int | str | None, default: int | str, n: int) -> int:
    """Turn a request's ``r``/``w`` (int, name or None) into an integer in 1..n."""
    if n < 1:
        raise QuorumValueError(f"n must be at least 1, got {n}")
    raw = default if value is None else value
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word == "one":
            return 1
        if word == "quorum":
            return n // 2 + 1
        if word == "all":
            return n
        if word.isdigit():
            raw = int(word)
        else:
            raise QuorumValueError(f"{name}={raw!r} is not an integer or one of {', '.join(NAMED)}")
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise QuorumValueError(f"{name}={raw!r} is not an integer or one of {', '.join(NAMED)}")
    if raw < 1:
        raise QuorumValueError(f"{name}={raw} must be at least 1")
    if raw > n:
        raise QuorumValueError(f"{name}={raw} is larger than n={n}")
    return raw


@dataclass(slots=True)
class WriteTally:
    """Acknowledgements of one write: ``enough`` at W durable acks, ``final`` when no more can come."""

    needed: int
    targets: tuple[str, ...]
    acked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def add_ack(self, node: str) -> None:
        if node not in self.acked and node not in self.failed:
            self.acked.append(node)

    def add_failure(self, node: str, error: BaseException | None = None) -> None:
        if node not in self.acked and node not in self.failed:
            self.failed.append(node)
            if error is not None:
                self.errors.append(error)

    @property
    def enough(self) -> bool:
        return len(self.acked) >= self.needed

    @property
    def hopeless(self) -> bool:
        """Even if every outstanding target acks, W cannot be reached."""
        return len(self.targets) - len(self.failed) < self.needed

    @property
    def final(self) -> bool:
        return len(self.acked) + len(self.failed) >= len(self.targets)


@dataclass(slots=True)
class ReadTally:
    """Answers of one read: ``enough`` at R answers; the merged object; who is behind (read repair).

    A replica answers with its stored record (bytes) or, for a write not yet committed, the
    object. Records are decoded here, and a record equal to the first one is not decoded
    again; while every answer is the same, the merge is that answer and nobody is behind.
    """

    needed: int
    targets: tuple[str, ...]
    answers: dict[str, Any] = field(default_factory=dict)   # node -> DVVSet | Crdt | None
    failed: list[str] = field(default_factory=list)
    same: bool = True                                        # every answer so far equal to the first
    _first: Any = None                                       # the first answer as it came
    _first_value: Any = None                                 # ... and decoded

    def add_answer(self, node: str, obj: Any) -> None:
        """Count ``node``'s answer; raises ``CodecError`` (counting nothing) for a malformed record."""
        if node in self.answers or node in self.failed:
            return
        if not self.answers:
            value = decode_object(obj) if type(obj) is bytes else obj
            self._first, self._first_value = obj, value
        elif self.same and obj == self._first:
            value = self._first_value
        else:
            value = decode_object(obj) if type(obj) is bytes else obj
            self.same = False
        self.answers[node] = value

    def add_failure(self, node: str) -> None:
        if node not in self.answers and node not in self.failed:
            self.failed.append(node)

    @property
    def enough(self) -> bool:
        return len(self.answers) >= self.needed

    @property
    def hopeless(self) -> bool:
        return len(self.targets) - len(self.failed) < self.needed

    @property
    def final(self) -> bool:
        return len(self.answers) + len(self.failed) >= len(self.targets)

    def merged(self) -> Any:
        if self.same:
            return self._first_value
        return objects.merge_all(self.answers.values())

    def behind(self) -> list[str]:
        """Replicas whose answer lacks something the merged object has: they need read repair."""
        if self.same:
            return []
        merged = self.merged()
        if merged is None:
            return []
        return [node for node, obj in self.answers.items() if not objects.descends(obj, merged)]
