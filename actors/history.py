"""History: every operation a chaos run made, with its invocation, completion and outcome.

    history = History()
    handle = history.invoke(3, "add", "set:0", "p3-17")
    try:
        ...
        history.complete(handle, "ok")
    except LeaderlessError as exc:
        history.complete(handle, outcome_of("add", exc), str(exc))

Outcomes follow Jepsen's: ``ok`` (it happened), ``fail`` (it certainly did not happen)
and ``info`` (indeterminate: it may or may not have happened). A write that ended in
``QuorumFailed``, ``RequestTimeout`` or a connection error may have reached some
replicas, so it is ``info``; a write refused as an ``InvalidRequest`` is ``fail``. A read
changes nothing, so a read that raised is always ``fail``. A remove refused as
``NotPresent`` (an ``InvalidRequest``: its read did not see the element) wrote nothing: ``fail``.

The recorder is safe to share between threads; the checkers (``actors.checker``) read
the finished list of ``Op`` records and nothing else.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from .errors import InvalidRequest

OUTCOMES = ("ok", "fail", "info")
READ_KINDS = frozenset({"read", "final-read"})
"""Kinds that change nothing: when one raises, it certainly did not happen."""


class Op(NamedTuple):
    """One operation of a run, from invocation to completion."""

    process: int | str
    """Who made it: a workload thread's number, or ``"nemesis"``."""
    kind: str
    """``add``, ``remove``, ``read``, ``write``, ``delete``, ``increment``, ``field-update``,
    ``field-remove``, ``elem-remove``, ``final-read`` or ``nemesis``."""
    key: str | None
    """The key it acted on (``None`` for a nemesis op)."""
    value: Any
    """What it tried to do: the element added, the value written, the fault injected."""
    invoked_at: float
    """Seconds since the history began, when the op was invoked."""
    completed_at: float | None
    """Seconds since the history began, when it completed; ``None`` when it never did."""
    outcome: str
    """``ok``, ``fail`` or ``info`` (indeterminate; also any op that never completed)."""
    result: Any = None
    """What it returned (a read's values, a write's observed values) or the error's text."""


def outcome_of(kind: str, error: BaseException) -> str:
    """The outcome of an op of ``kind`` that raised ``error``: ``fail`` or ``info``."""
    if kind in READ_KINDS or isinstance(error, InvalidRequest):
        return "fail"
    return "info"


class History:
    """A thread-safe, append-only record of ops (invocations first, completions later)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self._lock = threading.Lock()
        self._ops: list[Op] = []

    def now(self) -> float:
        """Seconds since this history began (the time base of every op)."""
        return self._clock() - self._start

    def invoke(self, process: int | str, kind: str, key: str | None, value: Any = None) -> int:
        """Record the start of an op; returns the handle ``complete`` takes."""
        with self._lock:
            self._ops.append(Op(process, kind, key, value, self.now(), None, "info"))
            return len(self._ops) - 1

    def complete(self, handle: int, outcome: str, result: Any = None) -> Op:
        """Record how the op behind ``handle`` ended."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        with self._lock:
            op = self._ops[handle]
            if op.completed_at is not None:
                raise ValueError(f"op {handle} ({op.kind} {op.key}) was already completed")
            op = self._ops[handle] = op._replace(completed_at=self.now(), outcome=outcome, result=result)
        return op

    def record(self, process: int | str, kind: str, key: str | None, value: Any, outcome: str,
               result: Any = None) -> Op:
        """Invoke and complete an op at once (nemesis events, bookkeeping)."""
        return self.complete(self.invoke(process, kind, key, value), outcome, result)

    @property
    def ops(self) -> list[Op]:
        """A snapshot of every op so far, in invocation order."""
        with self._lock:
            return list(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{kind: {outcome: count}}`` over every op so far."""
        out: dict[str, dict[str, int]] = {}
        for op in self.ops:
            per_kind = out.setdefault(op.kind, {"ok": 0, "fail": 0, "info": 0})
            per_kind[op.outcome] += 1
        return out

    # --- export ----------------------------------------------------------------------------

    def to_json(self) -> list[dict[str, Any]]:
        """Every op as a plain dict (JSON-ready when values and results are)."""
        return [op._asdict() for op in self.ops]

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write the history to ``path`` as a JSON list of ops."""
        Path(path).write_text(json.dumps(self.to_json(), default=_jsonable))

    @staticmethod
    def load(path: str | os.PathLike[str]) -> list[Op]:
        """The ops a ``dump`` wrote (lists stay lists)."""
        return [Op(**fields) for fields in json.loads(Path(path).read_text())]


def ops_of(history: History | Iterable[Op]) -> list[Op]:
    """A history's ops, whether given as a ``History`` or as any iterable of ``Op``."""
    return history.ops if isinstance(history, History) else list(history)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return repr(value)


__all__ = ["History", "OUTCOMES", "Op", "READ_KINDS", "ops_of", "outcome_of"]
