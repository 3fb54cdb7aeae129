"""Is a history of register operations linearizable? The Wing–Gong/Lowe search, as Knossos and porcupine do.

A history is a list of `RegisterOp` on one key: reads, writes and compare-and-sets, each with
the time it was invoked and the time it completed (None: it never did, indeterminate). The
search looks for an order of the operations that respects real time (an operation that
completed before another was invoked comes first), in which every completed operation sees
what a single register would show it, and where an indeterminate one either took effect at
some point after its invocation or never did. It walks the operations in time order, tries
each one that may go next, and backtracks; states already explored (which operations are
placed, and the register's value) are remembered, so a history of a few thousand
operations on one key is checked in seconds. Past ``time_limit`` or ``max_states`` the
verdict is ``"unknown"``.

Model: the register starts at ``initial``. A read returns the value; a write sets it; a
compare-and-set ``(expected, new)`` sets ``new`` when the value is ``expected`` and reports
whether it did. ``put(key, v, if_absent=True, serial=True)`` is ``cas(None, v)``.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable
from typing import Any, NamedTuple

INFINITY = float("inf")


class RegisterOp(NamedTuple):
    """One operation on one register."""
    process: Any
    kind: str                   # "read", "write" or "cas"
    invoked: float
    completed: float | None     # None: indeterminate (it may or may not have taken effect, at any later time)
    value: Any = None           # write: the value; cas: (expected, new)
    result: Any = None          # read: the value seen; cas: True if it swapped, False if it did not


def _step(state: Hashable, op: RegisterOp) -> tuple[bool, Hashable]:
    """Whether ``op`` may take effect in ``state`` with the outcome it reported, and the state after."""
    if op.kind == "read":
        return state == op.result, state
    if op.kind == "write":
        return True, op.value
    expected, new = op.value
    if op.completed is None:                        # indeterminate: it can only have taken effect by swapping
        return state == expected, new
    if op.result:
        return state == expected, new
    return state != expected, state


class _Entry:
    """A call or return event in a doubly linked list (the unlinking and relinking are Lowe's)."""

    __slots__ = ("index", "is_call", "match", "next", "op", "prev", "time")

    def __init__(self, index: int, op: RegisterOp | None, is_call: bool, at: float) -> None:
        self.index = index
        self.op = op
        self.is_call = is_call
        self.time = at
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None

    def lift(self) -> None:
        """Take this call and its return out of the list."""
        assert self.prev is not None and self.match is not None and self.match.prev is not None
        self.prev.next = self.next
        if self.next is not None:
            self.next.prev = self.prev
        ret = self.match
        ret.prev.next = ret.next
        if ret.next is not None:
            ret.next.prev = ret.prev

    def unlift(self) -> None:
        """Put them back where they were."""
        ret = self.match
        assert ret is not None and ret.prev is not None and self.prev is not None
        ret.prev.next = ret
        if ret.next is not None:
            ret.next.prev = ret
        self.prev.next = self
        if self.next is not None:
            self.next.prev = self


def _entries(ops: list[RegisterOp]) -> _Entry:
    """The events of ``ops`` in time order (at equal times, returns before calls: only what is
    strictly before must come first), linked after a head sentinel."""
    events: list[tuple[float, int, int, bool]] = []
    for i, op in enumerate(ops):
        events.append((op.invoked, 1, i, True))
        events.append((INFINITY if op.completed is None else op.completed, 0, i, False))
    events.sort()
    head = _Entry(-1, None, False, -INFINITY)
    calls: dict[int, _Entry] = {}
    last = head
    for at, _, i, is_call in events:
        entry = _Entry(i, ops[i], is_call, at)
        if is_call:
            calls[i] = entry
        else:
            calls[i].match = entry
        entry.prev = last
        last.next = entry
        last = entry
    return head


def check_register(ops: Iterable[RegisterOp], initial: Hashable = None, time_limit: float = 10.0,
                   max_states: int = 2_000_000) -> dict[str, Any]:
    """The verdict on one register's history: ``valid`` True, False or ``"unknown"`` (the search was too
    large), how many states were explored, and for an invalid history the longest order found and the
    operation that could not follow it."""
    history = list(ops)
    if not history:
        return {"valid": True, "ops": 0, "states": 0}
    must = sum(1 for op in history if op.completed is not None)
    head = _entries(history)
    state: Hashable = initial
    linearized = 0
    placed = 0                                       # completed operations placed so far
    seen: set[tuple[int, Hashable]] = set()
    stack: list[tuple[_Entry, Hashable, bool]] = []
    deadline = time.monotonic() + time_limit
    best: list[int] = []
    stuck: RegisterOp | None = None
    entry = head.next
    explored = 0
    while placed < must:
        explored += 1
        if explored % 1024 == 0 and (time.monotonic() > deadline or len(seen) > max_states):
            return {"valid": "unknown", "ops": len(history), "states": len(seen),
                    "reason": "time limit" if time.monotonic() > deadline else "state limit"}
        if entry is None:                             # only indeterminate operations are left unplaced
            break
        if entry.is_call:
            op = entry.op
            assert op is not None
            ok, after = _step(state, op)
            if ok:
                key = (linearized | 1 << entry.index, after)
                if key not in seen:
                    seen.add(key)
                    stack.append((entry, state, op.completed is not None))
                    state, linearized = after, linearized | 1 << entry.index
                    placed += op.completed is not None
                    entry.lift()
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if len(stack) >= len(best):               # the deepest order found: this op cannot follow it
                best, stuck = [e.index for e, _, _ in stack], entry.op
            if not stack:
                return {"valid": False, "ops": len(history), "states": len(seen),
                        "linearized": [history[i] for i in best], "cannot_follow": stuck}
            top, state, counted = stack.pop()
            linearized &= ~(1 << top.index)
            placed -= counted
            top.unlift()
            entry = top.next
    return {"valid": True, "ops": len(history), "states": len(seen)}


__all__ = ["RegisterOp", "check_register"]
