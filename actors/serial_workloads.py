"""Chaos workloads of serial (linearizable) requests, and their checker.

- ``cas-register``: clients read, write and compare-and-set a few keys with ``serial=True``;
  the history must be linearizable per key (``check_linearizable``: the Wing–Gong/Lowe search
  of ``actors.linearizable`` over a compare-and-set register).
- ``unique``: many clients claim the same few names with ``put(name, me, if_absent=True,
  serial=True)``; at most one claim of a name may succeed, and every later serial read
  returns its winner (also checked as linearizability: a claim is ``cas(None, me)``).

Op conventions (``actors.history``): ``read`` (result: the value read, or None),
``write`` (value), ``cas`` (value: ``[expected, new]``; a mismatch is outcome ``fail`` with
result ``{"mismatch": True}``: it certainly did not swap), ``claim`` (value: the claimant; a
name already taken is ``fail`` with ``{"mismatch": True}``), ``final-read``. Indeterminate
ops (``info``) may have taken effect at any time after they were invoked, or never.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from .client import Client
from .errors import LeaderlessError, VersionMismatch
from .history import History, Op, ops_of, outcome_of
from .linearizable import RegisterOp, check_register
from .workloads import Workload

MISMATCH = {"mismatch": True}


def _single(values: list[Any]) -> Any:
    """A serial read's value: the one value, None when absent (two would be a bug the checker reports)."""
    decoded = [bytes(v).decode("utf-8", "backslashreplace") for v in values]
    if len(decoded) > 1:
        return ("siblings", *sorted(decoded))
    return decoded[0] if decoded else None


def _register_op(op: Op) -> RegisterOp | None:
    """An op of the history as an operation on the key's register; None for one that certainly did nothing."""
    completed = op.completed_at if op.outcome == "ok" else None
    if op.kind in ("read", "final-read"):
        return RegisterOp(op.process, "read", op.invoked_at, op.completed_at, result=op.result) \
            if op.outcome == "ok" else None
    if op.kind == "write":
        if op.outcome == "fail":
            return None
        return RegisterOp(op.process, "write", op.invoked_at, completed, op.value)
    if op.kind in ("cas", "claim"):
        expected, new = (None, op.value) if op.kind == "claim" else tuple(op.value)
        if op.outcome == "fail":
            if op.result != MISMATCH:
                return None                                    # refused before it ran: nothing happened
            return RegisterOp(op.process, "cas", op.invoked_at, op.completed_at, (expected, new), False)
        return RegisterOp(op.process, "cas", op.invoked_at, completed, (expected, new), True)
    return None


def check_linearizable(history: History | Iterable[Op], time_limit: float = 30.0) -> dict[str, Any]:
    """Per key, is the history of serial reads, writes, compare-and-sets and claims linearizable?

    ``valid`` is True when every key is, False when any is not, ``"unknown"`` when some search was too
    large (and none failed). ``winners`` counts, per claimed name, the claims that succeeded."""
    by_key: dict[Any, list[RegisterOp]] = {}
    claims: dict[Any, int] = {}
    indeterminate = 0
    for op in ops_of(history):
        if op.key is None:
            continue
        converted = _register_op(op)
        if converted is not None:
            by_key.setdefault(op.key, []).append(converted)
            indeterminate += converted.completed is None
        if op.kind == "claim":
            claims[op.key] = claims.get(op.key, 0) + (op.outcome == "ok")
    verdicts = {key: check_register(ops, time_limit=time_limit) for key, ops in sorted(by_key.items(), key=str)}
    bad = sorted((k for k, v in verdicts.items() if v["valid"] is False), key=str)
    unknown = sorted((k for k, v in verdicts.items() if v["valid"] == "unknown"), key=str)
    return {
        "valid": False if bad else ("unknown" if unknown else True),
        "keys": len(verdicts),
        "linearizable_keys": sum(1 for v in verdicts.values() if v["valid"] is True),
        "not_linearizable": bad,
        "unknown_keys": unknown,
        "ops": sum(len(ops) for ops in by_key.values()),
        "indeterminate": indeterminate,
        "two_winners": sorted((k for k, n in claims.items() if n > 1), key=str),
        "explanations": {str(k): {"cannot_follow": repr(verdicts[k].get("cannot_follow")),
                                  "after": [repr(o) for o in verdicts[k].get("linearized", [])[-5:]]}
                         for k in bad[:5]},
    }


class CasRegisterWorkload(Workload):
    """Serial reads, writes and compare-and-sets on a few keys; values unique per writer."""

    name = "cas-register"

    def __init__(self, cluster: Any, history: History, *, clients: int = 5, keys: int = 3, **kwargs: Any) -> None:
        super().__init__(cluster, history, **kwargs)
        self.clients = clients
        self.keys = [f"cas:{i}" for i in range(keys)]

    def _plan(self) -> list[Any]:
        return [self._client] * self.clients

    def _client(self, proc: int, client: Client, rng: random.Random) -> None:
        last: dict[str, Any] = {}
        for seq in range(self.max_ops):
            if not self._wait():
                return
            key = rng.choice(self.keys)
            kind = rng.choice(["read", "read", "write", "cas", "cas"])
            if kind == "read":
                last[key] = self._serial_read(client, proc, key)
            elif kind == "write":
                self._serial_put(client, proc, "write", key, f"p{proc}-{seq}", None)
            else:
                self._serial_put(client, proc, "cas", key, f"p{proc}-{seq}", last.get(key))

    def _serial_read(self, client: Client, proc: int, key: str) -> Any:
        handle = self.history.invoke(proc, "read", key)
        try:
            result = client.get(key, serial=True, timeout=self.client_timeout, bucket=self.bucket)
        except LeaderlessError as exc:
            self.history.complete(handle, "fail", f"{type(exc).__name__}: {exc}")
            return None
        value = _single(result.values)
        self.history.complete(handle, "ok", value)
        return value

    def _serial_put(self, client: Client, proc: int, kind: str, key: str, value: str, expected: Any) -> None:
        """A write, or a compare-and-set from the value last read (with the context of a fresh read)."""
        if kind == "cas":
            try:
                current = client.get(key, serial=True, timeout=self.client_timeout, bucket=self.bucket)
            except LeaderlessError:
                return
            expected = _single(current.values)
            handle = self.history.invoke(proc, "cas", key, [expected, value])
            options: dict[str, Any] = ({"if_context": current.context} if expected is not None
                                       else {"if_absent": True})
        else:
            handle = self.history.invoke(proc, "write", key, value)
            options = {}
        try:
            client.put(key, value.encode(), serial=True, timeout=self.client_timeout, bucket=self.bucket, **options)
        except VersionMismatch:
            self.history.complete(handle, "fail", MISMATCH)
            return
        except LeaderlessError as exc:
            self.history.complete(handle, outcome_of(kind, exc), f"{type(exc).__name__}: {exc}")
            return
        self.history.complete(handle, "ok")

    def final_reads(self, client: Client, r: int | str = "all", attempts: int = 5) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self.keys:
            out[key] = None
            for attempt in range(attempts):
                handle = self.history.invoke("final", "final-read", key)
                try:
                    result = client.get(key, serial=True, timeout=5.0, bucket=self.bucket)
                except LeaderlessError as exc:
                    self.history.complete(handle, "fail", f"{type(exc).__name__}: {exc}")
                    self._stop.wait(0.5 * (attempt + 1))
                    continue
                out[key] = _single(result.values)
                self.history.complete(handle, "ok", out[key])
                break
        return out

    def check(self, final_reads: Mapping[str, Any]) -> dict[str, Any]:
        verdict = check_linearizable(self.history)
        acknowledged = sum(1 for op in self.history.ops if op.kind in ("write", "cas", "claim") and op.outcome == "ok")
        attempted = sum(1 for op in self.history.ops if op.kind in ("write", "cas", "claim"))
        unread = sorted(k for k, v in final_reads.items() if v is None and k not in self._absent_ok())
        return {**verdict, "valid": verdict["valid"] is True and not verdict["two_winners"],
                "acknowledged": acknowledged, "attempted": attempted, "lost": len(verdict["not_linearizable"]),
                "unexpected": len(verdict["two_winners"]), "recovered": 0, "unread_keys": unread,
                "stale_reads": 0, "stale_read_times": []}

    def _absent_ok(self) -> set[str]:
        """Keys nothing was ever acknowledged on may read as absent at the end."""
        written = {op.key for op in self.history.ops if op.kind in ("write", "cas", "claim") and op.outcome != "fail"}
        return {key for key in self.keys if key not in written}


class UniqueWorkload(CasRegisterWorkload):
    """Many clients claim the same few names at once: ``if_absent=True, serial=True``; readers check the owner."""

    name = "unique"

    def __init__(self, cluster: Any, history: History, *, names: int = 20, **kwargs: Any) -> None:
        super().__init__(cluster, history, **kwargs)
        self.keys = [f"name:{i}" for i in range(names)]

    def _client(self, proc: int, client: Client, rng: random.Random) -> None:
        order = list(self.keys)
        for seq in range(self.max_ops):
            if not self._wait():
                return
            if seq % len(order) == 0:
                rng.shuffle(order)
            name = order[seq % len(order)]
            if rng.random() < 0.3:
                self._serial_read(client, proc, name)
                continue
            me = f"p{proc}"
            handle = self.history.invoke(proc, "claim", name, me)
            try:
                client.put(name, me.encode(), if_absent=True, serial=True, timeout=self.client_timeout,
                           bucket=self.bucket)
            except VersionMismatch:
                self.history.complete(handle, "fail", MISMATCH)
                continue
            except LeaderlessError as exc:
                self.history.complete(handle, outcome_of("claim", exc), f"{type(exc).__name__}: {exc}")
                continue
            self.history.complete(handle, "ok")


__all__ = ["CasRegisterWorkload", "UniqueWorkload", "check_linearizable"]
