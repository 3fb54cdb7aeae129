"""Checkers: pure functions from a recorded history (and final reads) to a verdict.

No I/O and no cluster here: every function takes ``Op`` records (``actors.history``) and
plain values, and returns a JSON-ready dict whose ``valid`` (or ``converged``) says
whether the run kept its promises. They are modelled on Jepsen's checkers.

- ``check_set``: adds of unique elements to a few keys, then one final read per key.
  *lost* = acknowledged adds missing from the final read; *unexpected* = values in the
  final read that no add attempted; *recovered* = indeterminate adds that made it.
- ``check_register``: writes with the context of a read. An acknowledged write may
  disappear only when a later write that observed it (its read returned it) replaced
  it; a single writer's final value is its last acknowledged write or a later one;
  stale reads are counted.
- ``check_counter``: every read of a counter lies between the sum of the increments
  certainly applied before it and the sum of those possibly applied.
- ``check_convergence``: every primary replica of a key holds the same values.

Op conventions the workloads follow (``actors.workloads``):

    add    key, value=element                      outcome of the write (after retries)
    read   key, result=[values read]               siblings' values (a set read: their union)
    write  key, value=v, result={"observed": [...]}   observed = the values its read returned
    increment  key, value=delta
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from .history import History, Op, ops_of

Element = Any
Pair = tuple[Any, Element]


def _sorted(items: Iterable[Any]) -> list[Any]:
    return sorted(items, key=lambda item: (str(type(item)), repr(item)) if not isinstance(item, tuple)
                  else tuple(repr(part) for part in item))


# --- sets ------------------------------------------------------------------------------------

def check_set(history: History | Iterable[Op], final_reads: Mapping[str, Iterable[Element] | None]) -> dict[str, Any]:
    """Jepsen's set checker over ``add`` ops and a final read of every key.

    ``final_reads`` maps each key to the elements its final read returned (the union of
    every sibling), or to ``None`` when that read failed: a key that has adds but no final
    read makes the run invalid (nothing about it can be confirmed). An element is
    identified by ``(key, element)``. ``valid`` holds when nothing acknowledged is lost,
    nothing unexpected appears, no add that certainly failed shows up (``failed_present``)
    and every key was read. ``stale_reads`` counts ``read`` ops that missed an element
    whose add was acknowledged before the read began (``stale_read_times``: when each began).
    """
    ops = ops_of(history)
    outcome: dict[Pair, str] = {}
    rank = {"fail": 0, "info": 1, "ok": 2}
    for op in ops:
        if op.kind == "add":
            pair = (op.key, op.value)
            if pair not in outcome or rank[op.outcome] > rank[outcome[pair]]:
                outcome[pair] = op.outcome
    final = {key: set(values) for key, values in final_reads.items() if values is not None}
    keys_with_adds = {key for key, _ in outcome}
    unread = sorted(k for k in keys_with_adds | set(final_reads) if k not in final)

    ok_pairs = [p for p, o in outcome.items() if o == "ok"]
    lost = [p for p in ok_pairs if p[0] in final and p[1] not in final[p[0]]]
    present = [(key, e) for key, elements in final.items() for e in elements]
    unexpected = [p for p in present if p not in outcome]
    recovered = [p for p in present if outcome.get(p) == "info"]
    failed_present = [p for p in present if outcome.get(p) == "fail"]
    stale_at, reads = _stale_set_reads(ops)
    return {
        "valid": not lost and not unexpected and not failed_present and not unread,
        "attempted": len(outcome),
        "acknowledged": len(ok_pairs),
        "indeterminate": sum(1 for o in outcome.values() if o == "info"),
        "failed": sum(1 for o in outcome.values() if o == "fail"),
        "lost": len(lost),
        "unexpected": len(unexpected),
        "recovered": len(recovered),
        "failed_present": len(failed_present),
        "lost_elements": _sorted(lost),
        "unexpected_elements": _sorted(unexpected),
        "recovered_elements": _sorted(recovered),
        "failed_present_elements": _sorted(failed_present),
        "unread_keys": unread,
        "reads": reads,
        "stale_reads": len(stale_at),
        "stale_read_times": stale_at,
    }


def _stale_set_reads(ops: list[Op]) -> tuple[list[float], int]:
    """(when each stale read began, total ok reads); stale = missed an add acknowledged before it began."""
    acked: dict[Any, list[tuple[float, Element]]] = {}
    for op in ops:
        if op.kind == "add" and op.outcome == "ok" and op.completed_at is not None:
            acked.setdefault(op.key, []).append((op.completed_at, op.value))
    for entries in acked.values():
        entries.sort(key=lambda entry: entry[0])
    times = {key: [t for t, _ in entries] for key, entries in acked.items()}
    stale: list[float] = []
    total = 0
    for op in ops:
        if op.kind != "read" or op.outcome != "ok":
            continue
        total += 1
        entries = acked.get(op.key, [])
        before = bisect.bisect_left(times.get(op.key, []), op.invoked_at)
        seen = set(op.result or ())
        if not seen.issuperset(element for _, element in entries[:before]):
            stale.append(op.invoked_at)
    return sorted(stale), total


# --- registers -------------------------------------------------------------------------------

def check_register(history: History | Iterable[Op],
                   final_reads: Mapping[str, Iterable[Any] | None]) -> dict[str, Any]:
    """Registers written with the context of a read (siblings mode); values must be unique per key.

    - *lost*: an acknowledged write that is in the final read neither itself nor through a
      write that observed it (its read returned it, directly or through a chain of such
      writes): nothing replaced it, yet it is gone.
    - *stale_final* (single-writer keys, those only one process writes): the final read
      holds neither the writer's last acknowledged write nor any write it made later.
    - *unexpected*: a final value no write attempted.
    - *recovered*: an indeterminate write that took effect (it, or a write that observed it,
      is in the final read).
    - *stale_reads*: a read that returned a value older than a write acknowledged before the
      read was invoked. On a single-writer key "older" is the writer's own order; on a
      multi-writer key a read is current with respect to a write when it returns that
      write or one that observed it. A read returning siblings is current when any is.
    """
    ops = ops_of(history)
    writes: dict[Any, list[Op]] = {}
    reads: dict[Any, list[Op]] = {}
    for op in ops:
        if op.kind == "write":
            writes.setdefault(op.key, []).append(op)
        elif op.kind == "read" and op.outcome == "ok":
            reads.setdefault(op.key, []).append(op)
    for per_key in writes.values():
        per_key.sort(key=lambda op: op.invoked_at)
    single = sorted(k for k, ws in writes.items() if len({w.process for w in ws}) == 1)
    multi = sorted(k for k in writes if k not in single)
    final = {key: list(values) for key, values in final_reads.items() if values is not None}
    unread = sorted(k for k in set(writes) | set(final_reads) if k not in final)

    lost: list[Pair] = []
    unexpected: list[Pair] = []
    failed_present: list[Pair] = []
    recovered: list[Pair] = []
    stale_final: list[str] = []
    stale_single: list[float] = []
    stale_multi: list[float] = []
    for key, per_key in writes.items():
        index = {w.value: i for i, w in enumerate(per_key)}
        ancestors = _ancestors(per_key, index)
        key_reads = reads.get(key, [])
        if key in final:
            values = final[key]
            unexpected += [(key, v) for v in values if v not in index]
            failed_present += [(key, v) for v in values if v in index and per_key[index[v]].outcome == "fail"]
            covered = _cover(values, index, ancestors)
            lost += [(key, w.value) for i, w in enumerate(per_key) if w.outcome == "ok" and not covered >> i & 1]
            recovered += [(key, w.value) for i, w in enumerate(per_key) if w.outcome == "info" and covered >> i & 1]
            if key in single:
                acked = [i for i, w in enumerate(per_key) if w.outcome == "ok"]
                if acked and not any(index.get(v, -1) >= acked[-1] for v in values):
                    stale_final.append(key)
        if key in single:
            stale_single += _stale_single_reads(per_key, index, key_reads)
        else:
            stale_multi += _stale_multi_reads(per_key, index, ancestors, key_reads)
    for key, values in final.items():
        if key not in writes:
            unexpected += [(key, v) for v in values]
    ok_writes = sum(1 for ws in writes.values() for w in ws if w.outcome == "ok")
    return {
        "valid": not lost and not unexpected and not failed_present and not stale_final and not unread,
        "single_writer_keys": single,
        "multi_writer_keys": multi,
        "attempted": sum(len(ws) for ws in writes.values()),
        "acknowledged": ok_writes,
        "indeterminate": sum(1 for ws in writes.values() for w in ws if w.outcome == "info"),
        "lost": len(lost),
        "unexpected": len(unexpected),
        "recovered": len(recovered),
        "failed_present": len(failed_present),
        "lost_writes": _sorted(lost),
        "unexpected_values": _sorted(unexpected),
        "recovered_values": _sorted(recovered),
        "failed_present_values": _sorted(failed_present),
        "stale_final": stale_final,
        "unread_keys": unread,
        "final_siblings": {key: len(values) for key, values in sorted(final.items())},
        "reads": sum(len(rs) for rs in reads.values()),
        "stale_reads": len(stale_single) + len(stale_multi),
        "stale_reads_single_writer": len(stale_single),
        "stale_reads_multi_writer": len(stale_multi),
        "stale_read_times": sorted(stale_single + stale_multi),
    }


def _observed(op: Op) -> list[Any]:
    result = op.result
    if isinstance(result, Mapping):
        return list(result.get("observed") or ())
    return []


def _ancestors(writes: list[Op], index: dict[Any, int]) -> list[int]:
    """Per write, a bitmask of itself and every write it observed, transitively."""
    masks: list[int | None] = [None] * len(writes)
    for start in range(len(writes)):
        stack = [start]
        while stack:                                  # iterative post-order: chains can be long
            i = stack[-1]
            if masks[i] is not None:
                stack.pop()
                continue
            parents = [index[v] for v in _observed(writes[i]) if v in index and index[v] != i]
            pending = [p for p in parents if masks[p] is None and p not in stack]
            if pending:
                stack.extend(pending)
                continue
            mask = 1 << i
            for p in parents:
                mask |= masks[p] or 0               # a cycle (impossible in a sane store) adds nothing
            masks[i] = mask
            stack.pop()
    return [m or 0 for m in masks]


def _cover(values: Iterable[Any], index: dict[Any, int], ancestors: list[int]) -> int:
    mask = 0
    for v in values:
        if v in index:
            mask |= ancestors[index[v]]
    return mask


def _stale_single_reads(writes: list[Op], index: dict[Any, int], reads: list[Op]) -> list[float]:
    acked = sorted((w.completed_at, i) for i, w in enumerate(writes)
                   if w.outcome == "ok" and w.completed_at is not None)
    times = [t for t, _ in acked]
    latest: list[int] = []                           # latest[j]: the newest write among the first j+1 acks
    for _, i in acked:
        latest.append(max(i, latest[-1]) if latest else i)
    stale = []
    for read in reads:
        j = bisect.bisect_left(times, read.invoked_at)
        if j and not any(index.get(v, -1) >= latest[j - 1] for v in read.result or ()):
            stale.append(read.invoked_at)
    return stale


def _stale_multi_reads(writes: list[Op], index: dict[Any, int], ancestors: list[int], reads: list[Op]
                       ) -> list[float]:
    acked = sorted((w.completed_at, i) for i, w in enumerate(writes)
                   if w.outcome == "ok" and w.completed_at is not None)
    times = [t for t, _ in acked]
    prefix = [0]
    for _, i in acked:
        prefix.append(prefix[-1] | 1 << i)
    stale = []
    for read in reads:
        before = prefix[bisect.bisect_left(times, read.invoked_at)]
        if before & ~_cover(read.result or (), index, ancestors):
            stale.append(read.invoked_at)
    return stale


# --- counters --------------------------------------------------------------------------------

def check_counter(history: History | Iterable[Op], final_reads: Mapping[Any, int | None] | None = None,
                  *, strict: bool = False) -> dict[str, Any]:
    """Counter reads lie between what was certainly and what was possibly applied.

    For a read, an ``increment`` acknowledged before the read began certainly counts; one
    acknowledged or indeterminate and invoked before the read ended possibly counts; a
    failed one never does. Deltas may be negative (decrements). ``final_reads`` are reads
    after everything ended (every acknowledged increment counts, every indeterminate one
    may); ``None`` for a key whose final read failed.

    A read above its upper bound counted something never attempted, or an operation
    twice: always an error (``unexpected``). A final read below its lower bound lost
    acknowledged increments: an error (``lost``). A read during the run below its lower
    bound missed increments acknowledged elsewhere: with ``strict`` (a linearizable
    counter, Jepsen's checker) an error, otherwise a ``stale_read`` (an eventually
    consistent counter read from R replicas may). ``valid`` when there is no error and
    every key had its final read.
    """
    ops = ops_of(history)
    finals = dict(final_reads or {})
    keys: list[Any] = sorted({op.key for op in ops if op.kind in ("increment", "read")} | set(finals), key=str)
    errors: list[dict[str, Any]] = []
    stale: list[float] = []
    acknowledged: dict[Any, int] = {}
    attempted: dict[Any, int] = {}
    read_count = lost = unexpected = 0
    end = float("inf")
    for key in keys:
        incs = [op for op in ops if op.kind == "increment" and op.key == key and op.outcome != "fail"]
        sure = sorted((op.completed_at, op.value) for op in incs if op.outcome == "ok" and op.completed_at is not None)
        maybe = sorted((op.invoked_at, op.value) for op in incs)
        sure_t, sure_sum, sure_pos, sure_neg = _prefix(sure)
        maybe_t, _, maybe_pos, maybe_neg = _prefix(maybe)
        acknowledged[key] = sure_sum[-1]
        attempted[key] = maybe_pos[-1] + maybe_neg[-1]
        checks = [(op.invoked_at, op.completed_at if op.completed_at is not None else end, op.result, "read")
                  for op in ops if op.kind == "read" and op.key == key and op.outcome == "ok"]
        if finals.get(key) is not None:
            checks.append((end, end, finals[key], "final-read"))
        for invoked, completed, value, kind in checks:
            read_count += 1
            j = bisect.bisect_left(sure_t, invoked) if invoked != end else len(sure_t) - 1
            k = bisect.bisect_left(maybe_t, completed) if completed != end else len(maybe_t) - 1
            lower = sure_sum[j] + (maybe_neg[k] - sure_neg[j])
            upper = sure_sum[j] + (maybe_pos[k] - sure_pos[j])
            error = {"key": key, "kind": kind, "value": value, "lower": lower, "upper": upper,
                     "at": None if invoked == end else invoked}
            if not isinstance(value, int) or isinstance(value, bool) or value > upper:
                unexpected += 1
                errors.append(error)
            elif value < lower and kind == "final-read":
                lost += 1
                errors.append(error)
            elif value < lower and strict:
                errors.append(error)
            elif value < lower:
                stale.append(invoked)
    increments = [op for op in ops if op.kind == "increment"]
    unread = sorted((k for k in keys if finals.get(k) is None), key=str) if final_reads is not None else []
    return {
        "valid": not errors and not unread,
        "attempted": sum(1 for op in increments if op.outcome != "fail"),
        "acknowledged": sum(1 for op in increments if op.outcome == "ok"),
        "indeterminate": sum(1 for op in increments if op.outcome == "info"),
        "lost": lost,
        "unexpected": unexpected,
        "reads": read_count,
        "stale_reads": len(stale),
        "stale_read_times": sorted(stale),
        "errors": errors,
        "unread_keys": unread,
        "acknowledged_sum": acknowledged,
        "attempted_sum": attempted,
        "final": {key: finals.get(key) for key in keys} if final_reads is not None else {},
    }


def _prefix(points: list[tuple[float, int]]) -> tuple[list[float], list[int], list[int], list[int]]:
    """Times, and prefix sums (all, positive parts, negative parts) with a leading 0; index j = first j points."""
    times = [t for t, _ in points]
    total, pos, neg = [0], [0], [0]
    for _, delta in points:
        total.append(total[-1] + delta)
        pos.append(pos[-1] + max(0, delta))
        neg.append(neg[-1] + min(0, delta))
    return times + [float("inf")], total, pos, neg


# --- convergence -----------------------------------------------------------------------------

def check_convergence(inspections: Mapping[str, Mapping[str, Any]],
                      primaries: Mapping[str, Iterable[str]]) -> dict[str, Any]:
    """Do all primary replicas of every key hold identical data?

    ``inspections`` maps a node to its own objects by key (what ``LocalCluster.inspect``
    returns: a ``LocalObject`` or ``None`` when the node holds nothing); ``primaries`` maps
    each key to its primary replicas. Two copies are identical when their sorted live
    values and their tombstone flag are equal. A primary missing from ``inspections``
    (it could not be asked) counts as divergent.
    """
    divergent: dict[str, dict[str, Any]] = {}
    for key, nodes in primaries.items():
        states: dict[str, Any] = {}
        for node in nodes:
            per_node = inspections.get(node)
            if per_node is None or key not in per_node:
                states[node] = "unknown"
            else:
                states[node] = _state(per_node[key])
        if len(set(states.values())) > 1 or "unknown" in states.values():
            divergent[key] = {node: _describe(state) for node, state in states.items()}
    return {
        "converged": not divergent,
        "keys": len(primaries),
        "divergent": len(divergent),
        "divergent_keys": dict(sorted(divergent.items())),
    }


def _state(obj: Any) -> Any:
    if obj is None:
        return None
    return tuple(sorted(obj.values)), bool(obj.tombstone)


def _describe(state: Any) -> Any:
    if state is None or state == "unknown":
        return state or "absent"
    values, tombstone = state
    digest = hashlib.sha1(repr(values).encode()).hexdigest()[:10]
    return {"values": len(values), "tombstone": tombstone, "digest": digest}


__all__ = ["check_convergence", "check_counter", "check_register", "check_set"]
