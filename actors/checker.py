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
- ``check_orset``: unique elements added to and removed from ``set`` buckets. An
  acknowledged add whose element no remove may have taken is in the final read (*lost*
  otherwise); an element whose remove was acknowledged is absent (*resurrected*
  otherwise); indeterminate adds and removes may go either way.
- ``check_map``: the same rules per map field (its presence, the elements of its set, a
  flag's truth), and a register field holds a value somebody assigned.
- ``check_delete``: single-writer keys written, deleted with the read's context and
  written again: what an acknowledged delete (or write) observed never comes back, and
  an acknowledged write is present unless a later write or delete observed it.
- ``check_convergence``: every primary replica of a key holds the same values and,
  with ``copies=True``, exactly those primaries hold a copy (a tombstone counts).

Op conventions the workloads follow (``actors.workloads``, ``actors.removal_workloads``):

    add    key, value=element                      outcome of the write (after retries)
    remove key, value=element                      an OR-set remove (it read first)
    read   key, result=[values read]               siblings' values (a set read: their union)
    write  key, value=v, result={"observed": [...]}   observed = the values its read returned
    delete key, value=unique id, result={"observed": [...]}   a delete with its read's context
    increment  key, value=delta
    field-update  key, value={"field", "type", "op", "arg"}   a map field update
    field-remove  key, value={"field", "type"}                a map field remove (it read first)
    elem-remove   key, value={"field", "type": "set", "element"}   removes an element of a set field
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
    twice: always an error (``unexpected``; ``over_counted`` counts those that are numbers).
    A final read below its lower bound lost acknowledged increments: an error (``lost``). A read during the run below its lower
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
    read_count = lost = unexpected = over_counted = 0
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
                over_counted += isinstance(value, int) and not isinstance(value, bool)
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
        "over_counted": over_counted,
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


# --- removes: OR-sets, maps, deletes --------------------------------------------------------

_RANK = {"fail": 0, "info": 1, "ok": 2}


def _best(ops: Iterable[Op]) -> str | None:
    """The strongest outcome among ``ops`` (ok > info > fail); None for none."""
    best = None
    for op in ops:
        if best is None or _RANK[op.outcome] > _RANK[best]:
            best = op.outcome
    return best


def _judge(adds: Mapping[Pair, list[Op]], removes: Mapping[Pair, list[Op]], present: set[Pair],
           read_keys: set[Any]) -> dict[str, list[Pair]]:
    """The observed-remove rules over ``(key, element)`` pairs (elements are unique: added once).

    - removes that took effect for certain (``ok``): the element is absent, unless an add of it
      may be concurrent with that remove (indeterminate, or not complete when the remove
      began): *resurrected* otherwise;
    - an indeterminate remove (``info``): the element may be present or absent;
    - no remove took effect: an acknowledged add is present (*lost* otherwise), an add that
      certainly failed is absent (*failed_present* otherwise), an indeterminate one may be
      present (*recovered*);
    - present elements nobody added are *unexpected*.
    Pairs of keys without a final read are not judged.
    """
    out: dict[str, list[Pair]] = {name: [] for name in
                                  ("lost", "resurrected", "unexpected", "recovered", "failed_present", "removed",
                                   "kept", "removed_maybe")}
    for pair in set(adds) | set(removes) | present:
        if pair[0] not in read_keys:
            continue
        pair_adds = adds.get(pair, [])
        pair_removes = [op for op in removes.get(pair, []) if op.outcome != "fail"]
        is_present = pair in present
        if not pair_adds:
            if is_present:
                out["unexpected"].append(pair)
            continue
        acked_removes = [op for op in pair_removes if op.outcome == "ok"]
        if acked_removes:
            first = min(op.invoked_at for op in acked_removes)
            concurrent = any(op.outcome == "info" or op.completed_at is None or op.completed_at > first
                             for op in pair_adds)
            if is_present and not concurrent:
                out["resurrected"].append(pair)
            elif not is_present:
                out["removed"].append(pair)
            else:
                out["removed_maybe"].append(pair)
            continue
        if pair_removes:                          # only indeterminate removes: either way
            out["removed_maybe"].append(pair)
            continue
        best = _best(pair_adds)
        if best == "ok":
            out["kept" if is_present else "lost"].append(pair)
        elif is_present and best == "info":
            out["recovered"].append(pair)
        elif is_present:
            out["failed_present"].append(pair)
    return {name: _sorted(pairs) for name, pairs in out.items()}


def _removal_verdict(judged: dict[str, list[Pair]], adds: Mapping[Pair, list[Op]], unread: list[Any],
                     ops: list[Op], kinds: Iterable[str]) -> dict[str, Any]:
    """The common fields of the OR-set and map verdicts: ``acknowledged`` (``attempted``...) count
    the operations of ``kinds`` (adds and removes), ``elements`` the elements added."""
    kinds = set(kinds)
    changes = [op for op in ops if op.kind in kinds]
    outcomes = [_best(per_pair) for per_pair in adds.values()]
    return {
        "valid": not (judged["lost"] or judged["resurrected"] or judged["unexpected"] or judged["failed_present"]
                      or unread),
        "attempted": sum(1 for op in changes if op.outcome != "fail"),
        "acknowledged": sum(1 for op in changes if op.outcome == "ok"),
        "indeterminate": sum(1 for op in changes if op.outcome == "info"),
        "failed": sum(1 for op in changes if op.outcome == "fail"),
        "elements": {"added": sum(1 for o in outcomes if o == "ok"),
                     "indeterminate": sum(1 for o in outcomes if o == "info"),
                     "failed": sum(1 for o in outcomes if o == "fail")},
        "lost": len(judged["lost"]),
        "resurrected": len(judged["resurrected"]),
        "unexpected": len(judged["unexpected"]),
        "recovered": len(judged["recovered"]),
        "failed_present": len(judged["failed_present"]),
        "removed": len(judged["removed"]),
        "kept": len(judged["kept"]),
        "removed_maybe": len(judged["removed_maybe"]),
        "lost_elements": judged["lost"],
        "resurrected_elements": judged["resurrected"],
        "unexpected_elements": judged["unexpected"],
        "recovered_elements": judged["recovered"],
        "failed_present_elements": judged["failed_present"],
        "unread_keys": unread,
    }


def _remove_counts(ops: Iterable[Op], kinds: Iterable[str]) -> dict[str, int]:
    kinds = set(kinds)
    counts = {"ok": 0, "info": 0, "fail": 0}
    for op in ops:
        if op.kind in kinds:
            counts[op.outcome] += 1
    return counts


def check_orset(history: History | Iterable[Op],
                final_reads: Mapping[str, Iterable[Element] | None]) -> dict[str, Any]:
    """An OR-set (``set`` bucket) history: ``add`` and ``remove`` ops of unique elements.

    ``final_reads`` maps each key to the elements its final read returned, ``None`` when that
    read failed (the run is then invalid: nothing about the key can be confirmed). See
    ``_judge`` for the rules; ``valid`` when nothing is lost, resurrected, unexpected or
    present though its add certainly failed, and every key was read. ``removes`` counts the
    remove ops by outcome (``fail``: refused as ``NotPresent``, or its read failed).
    """
    ops = ops_of(history)
    adds: dict[Pair, list[Op]] = {}
    removes: dict[Pair, list[Op]] = {}
    for op in ops:
        if op.kind == "add":
            adds.setdefault((op.key, op.value), []).append(op)
        elif op.kind == "remove":
            removes.setdefault((op.key, op.value), []).append(op)
    final = {key: set(values) for key, values in final_reads.items() if values is not None}
    keys = {key for key, _ in adds} | {key for key, _ in removes} | set(final_reads)
    unread = sorted((k for k in keys if k not in final), key=str)
    present = {(key, e) for key, elements in final.items() for e in elements}
    judged = _judge(adds, removes, present, set(final))
    stale = _stale_orset_reads(ops, adds, removes)
    return {**_removal_verdict(judged, adds, unread, ops, ("add", "remove")),
            "removes": _remove_counts(ops, ("remove",)),
            "reads": sum(1 for op in ops if op.kind == "read" and op.outcome == "ok"),
            "stale_reads": len(stale), "stale_read_times": stale}


def _stale_orset_reads(ops: list[Op], adds: Mapping[Pair, list[Op]], removes: Mapping[Pair, list[Op]]
                       ) -> list[float]:
    """Reads that missed an element acknowledged before they began and not removed (no remove of it
    invoked) before they ended."""
    acked: dict[Any, list[tuple[float, Element, float]]] = {}
    for (key, element), pair_adds in adds.items():
        done = [op.completed_at for op in pair_adds if op.outcome == "ok" and op.completed_at is not None]
        if done:
            removed_at = min((op.invoked_at for op in removes.get((key, element), ()) if op.outcome != "fail"),
                             default=float("inf"))
            acked.setdefault(key, []).append((min(done), element, removed_at))
    stale = []
    for op in ops:
        if op.kind != "read" or op.outcome != "ok":
            continue
        seen = set(op.result or ())
        end = op.completed_at if op.completed_at is not None else float("inf")
        if any(at < op.invoked_at and removed_at > end and element not in seen
               for at, element, removed_at in acked.get(op.key, ())):
            stale.append(op.invoked_at)
    return sorted(stale)


def map_fields(value: Any) -> dict[tuple[str, str], Any]:
    """A map read as ``{(name, type): value}``, from that dict or from ``[[name, type, value], ...]``
    (the JSON-friendly form the map workload records)."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {(k[0], k[1]): v for k, v in value.items()}
    return {(name, ftype): v for name, ftype, v in value}


def check_map(history: History | Iterable[Op], final_reads: Mapping[str, Any]) -> dict[str, Any]:
    """A map bucket history: field updates and removes, the OR rules per field (see ``_judge``).

    Ops: ``field-update`` (value ``{"field", "type", "op", "arg"}``; ops ``assign`` for a
    register, ``add`` for a set, ``enable`` for a flag), ``field-remove`` (``{"field", "type"}``)
    and ``elem-remove`` (``{"field", "type": "set", "element"}``). Judged as elements:

    - ``("field", name, type)``: the field's presence; every update of it (an element remove
      inside a set field too: it is an update of the map) adds it, a field remove removes it;
    - ``("elem", name, e)``: ``e`` in the set field ``name``; added by ``add``, removed by an
      ``elem-remove`` of it or a remove of the whole field;
    - ``("flag", name)``: the flag field is present and true; added by ``enable``, removed by
      the field's remove.

    A register field that is present must hold a value some ``assign`` attempted (else
    *unexpected*; one that certainly failed: *failed_present*). Which of a register's values
    wins is not judged (concurrent assignments resolve by timestamp). ``final_reads`` map a key
    to its map (``map_fields`` forms), ``None`` when the read failed.
    """
    ops = ops_of(history)
    adds: dict[Pair, list[Op]] = {}
    removes: dict[Pair, list[Op]] = {}
    assigned: dict[tuple[Any, str], dict[Any, list[Op]]] = {}
    set_elements: dict[tuple[Any, str], set[Any]] = {}
    for op in ops:
        if op.kind not in ("field-update", "field-remove", "elem-remove") or not isinstance(op.value, Mapping):
            continue
        name, ftype = op.value["field"], op.value["type"]
        if op.kind in ("field-update", "elem-remove"):
            adds.setdefault((op.key, ("field", name, ftype)), []).append(op)
        if op.kind == "field-update":
            verb, arg = op.value.get("op"), op.value.get("arg")
            if ftype == "set" and verb == "add":
                adds.setdefault((op.key, ("elem", name, arg)), []).append(op)
                set_elements.setdefault((op.key, name), set()).add(arg)
            elif ftype == "flag" and verb == "enable":
                adds.setdefault((op.key, ("flag", name)), []).append(op)
            elif ftype == "register" and verb == "assign":
                assigned.setdefault((op.key, name), {}).setdefault(arg, []).append(op)
        elif op.kind == "elem-remove":
            removes.setdefault((op.key, ("elem", name, op.value["element"])), []).append(op)
        else:        # the elements added before it (ops are in invocation order): not those added later
            removes.setdefault((op.key, ("field", name, ftype)), []).append(op)
            if ftype == "set":
                for element in set_elements.get((op.key, name), ()):
                    removes.setdefault((op.key, ("elem", name, element)), []).append(op)
            elif ftype == "flag":
                removes.setdefault((op.key, ("flag", name)), []).append(op)
    final = {key: map_fields(value) for key, value in final_reads.items() if value is not None}
    keys = {key for key, _ in adds} | {key for key, _ in removes} | set(final_reads)
    unread = sorted((k for k in keys if k not in final), key=str)
    present: set[Pair] = set()
    bad_values: list[Pair] = []
    failed_values: list[Pair] = []
    for key, fields in final.items():
        for (name, ftype), value in fields.items():
            present.add((key, ("field", name, ftype)))
            if ftype == "set":
                present.update((key, ("elem", name, e)) for e in value)
            elif ftype == "flag" and value:
                present.add((key, ("flag", name)))
            elif ftype == "register":
                tried = assigned.get((key, name), {})
                if value not in tried:
                    bad_values.append((key, (name, value)))
                elif _best(tried[value]) == "fail":
                    failed_values.append((key, (name, value)))
    judged = _judge(adds, removes, present, set(final))
    judged["unexpected"] = _sorted(judged["unexpected"] + bad_values)
    judged["failed_present"] = _sorted(judged["failed_present"] + failed_values)
    verdict = _removal_verdict(judged, adds, unread, ops, ("field-update", "field-remove", "elem-remove"))
    verdict["fields"] = sum(1 for _, element in adds if element[0] == "field")
    verdict["removes"] = _remove_counts(ops, ("field-remove", "elem-remove"))
    verdict["reads"] = sum(1 for op in ops if op.kind == "read" and op.outcome == "ok")
    verdict["stale_reads"] = 0
    verdict["stale_read_times"] = []
    return verdict


def check_delete(history: History | Iterable[Op],
                 final_reads: Mapping[str, Iterable[Any] | None]) -> dict[str, Any]:
    """Single-writer keys written (``write``), deleted (``delete``) with a read's context, written again.

    Every write and delete carries ``result={"observed": [...]}``, the values the read it was
    based on returned; a delete's ``value`` is a unique id. Observation is transitive (a write
    that observed v2, which observed v1, replaced both).

    - *resurrected*: a value in the final read that an acknowledged write or delete observed:
      it replaced that value, which must never come back.
    - *lost*: an acknowledged write that the final read neither holds nor covers (no value in
      it observed the write) and that no delete which may have taken effect (``ok``/``info``)
      observed.
    - *unexpected*: a final value nobody wrote; *failed_present*: one whose write certainly failed.
    - *recovered*: an indeterminate write that is in the final read (or covered by it).
    """
    ops = ops_of(history)
    by_key: dict[Any, list[Op]] = {}
    for op in ops:
        if op.kind in ("write", "delete"):
            by_key.setdefault(op.key, []).append(op)
    final = {key: list(values) for key, values in final_reads.items() if values is not None}
    unread = sorted((k for k in set(by_key) | set(final_reads) if k not in final), key=str)
    lost: list[Pair] = []
    resurrected: list[Pair] = []
    unexpected: list[Pair] = []
    failed_present: list[Pair] = []
    recovered: list[Pair] = []
    writers: dict[Any, int] = {}
    for key, per_key in by_key.items():
        per_key.sort(key=lambda op: op.invoked_at)
        writers[key] = len({op.process for op in per_key})
        index = {op.value: i for i, op in enumerate(per_key)}
        ancestors = _ancestors(per_key, index)
        if key not in final:
            continue
        values = final[key]
        unexpected += [(key, v) for v in values if v not in index or per_key[index[v]].kind != "write"]
        failed_present += [(key, v) for v in values if v in index and per_key[index[v]].outcome == "fail"]
        covered = _cover(values, index, ancestors)
        replaced = 0                              # values some acknowledged op observed
        deleted = 0                               # values a delete that may have taken effect observed
        for i, op in enumerate(per_key):
            strict = ancestors[i] & ~(1 << i)
            if op.outcome == "ok":
                replaced |= strict
            if op.kind == "delete" and op.outcome != "fail":
                deleted |= strict
        resurrected += [(key, v) for v in values if v in index and replaced >> index[v] & 1]
        for i, op in enumerate(per_key):
            if op.kind != "write":
                continue
            if op.outcome == "ok" and not (covered | deleted) >> i & 1:
                lost.append((key, op.value))
            elif op.outcome == "info" and covered >> i & 1:
                recovered.append((key, op.value))
    for key, values in final.items():
        if key not in by_key:
            unexpected += [(key, v) for v in values]
    writes = [op for per_key in by_key.values() for op in per_key if op.kind == "write"]
    deletes = [op for per_key in by_key.values() for op in per_key if op.kind == "delete"]
    return {
        "valid": not (lost or resurrected or unexpected or failed_present or unread),
        "attempted": sum(1 for op in writes + deletes if op.outcome != "fail"),
        "acknowledged": sum(1 for op in writes + deletes if op.outcome == "ok"),
        "indeterminate": sum(1 for op in writes + deletes if op.outcome == "info"),
        "writes": {o: sum(1 for op in writes if op.outcome == o) for o in ("ok", "info", "fail")},
        "deletes": {o: sum(1 for op in deletes if op.outcome == o) for o in ("ok", "info", "fail")},
        "lost": len(lost),
        "resurrected": len(resurrected),
        "unexpected": len(unexpected),
        "recovered": len(recovered),
        "failed_present": len(failed_present),
        "lost_writes": _sorted(lost),
        "resurrected_values": _sorted(resurrected),
        "unexpected_values": _sorted(unexpected),
        "recovered_values": _sorted(recovered),
        "failed_present_values": _sorted(failed_present),
        "multi_writer_keys": sorted((k for k, count in writers.items() if count > 1), key=str),
        "deleted_keys": sorted((k for k, v in final.items() if not v and k in by_key), key=str),
        "unread_keys": unread,
        "reads": sum(1 for op in ops if op.kind == "read" and op.outcome == "ok"),
        "stale_reads": 0,
        "stale_read_times": [],
    }


# --- convergence -----------------------------------------------------------------------------

def check_convergence(inspections: Mapping[str, Mapping[str, Any]], primaries: Mapping[str, Iterable[str]],
                      *, copies: bool = False) -> dict[str, Any]:
    """Do all primary replicas of every key hold identical data (and, with ``copies``, only they)?

    ``inspections`` maps a node to its own objects by key (what ``LocalCluster.inspect``
    returns: a ``LocalObject`` or ``None`` when the node holds nothing); ``primaries`` maps
    each key to its primary replicas (as many as the key's bucket n, or the members when
    fewer). Two copies are identical when their live values (sets and maps compared by
    content) and their tombstone flag are equal. A primary missing from ``inspections`` (it
    could not be asked) counts as divergent.

    With ``copies=True`` the inspections must cover every member: a key's copies are the
    nodes that hold any object for it (a tombstone counts), and they must be exactly its
    primaries, or nobody (never written, or a reaped tombstone). ``wrong_copies`` names the
    keys that are held elsewhere too (a fallback that has not handed off, a copy handoff
    should have dropped) or by only some primaries; ``converged`` needs exact copies then.
    """
    divergent: dict[str, dict[str, Any]] = {}
    wrong: dict[str, dict[str, Any]] = {}
    counts: dict[int, int] = {}
    for key, nodes in primaries.items():
        nodes = list(nodes)
        states: dict[str, Any] = {}
        for node in nodes:
            per_node = inspections.get(node)
            if per_node is None or key not in per_node:
                states[node] = "unknown"
            else:
                states[node] = _state(per_node[key])
        if len(set(states.values())) > 1 or "unknown" in states.values():
            divergent[key] = {node: _describe(state) for node, state in states.items()}
        if copies:
            holders = sorted(node for node, per_node in inspections.items() if per_node.get(key) is not None)
            counts[len(holders)] = counts.get(len(holders), 0) + 1
            if holders and set(holders) != set(nodes):
                wrong[key] = {"holders": holders, "primaries": sorted(nodes), "copies": len(holders),
                              "expected": len(nodes)}
    out: dict[str, Any] = {
        "converged": not divergent and not wrong,
        "keys": len(primaries),
        "divergent": len(divergent),
        "divergent_keys": dict(sorted(divergent.items())),
    }
    if copies:
        out.update({"copies_exact": not wrong, "copy_failures": len(wrong), "wrong_copies": dict(sorted(wrong.items())),
                    "copy_counts": {str(k): v for k, v in sorted(counts.items())}})
    return out


def canonical(value: Any) -> Any:
    """A hashable, order-free form of a stored value: sets and maps compare by content."""
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted((canonical(v) for v in value), key=repr)))
    if isinstance(value, Mapping):
        return ("map", tuple(sorted(((canonical(k), canonical(v)) for k, v in value.items()), key=repr)))
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def _state(obj: Any) -> Any:
    if obj is None:
        return None
    return tuple(sorted((canonical(v) for v in obj.values), key=repr)), bool(obj.tombstone)


def _describe(state: Any) -> Any:
    if state is None or state == "unknown":
        return state or "absent"
    values, tombstone = state
    digest = hashlib.sha1(repr(values).encode()).hexdigest()[:10]
    return {"values": len(values), "tombstone": tombstone, "digest": digest}


def check_linearizable(history: History | Iterable[Op], time_limit: float = 30.0) -> dict[str, Any]:
    """Per key, is the history of serial reads, writes, compare-and-sets and claims linearizable?
    (``actors.serial_workloads.check_linearizable``: the Wing–Gong/Lowe search over a register.)"""
    from .serial_workloads import check_linearizable as check

    return check(history, time_limit)


__all__ = ["canonical", "check_convergence", "check_counter", "check_delete", "check_linearizable", "check_map",
           "check_orset", "check_register", "check_set", "map_fields"]
