"""Consistent hashing for leaderless: Dynamo partitioning strategy 3, Riak-style.

The 160-bit SHA-1 hash space is cut into ``Q`` equal partitions (``Q`` a power of
two, 256 by default). A key belongs to partition ``sha1(key) // (2**160 // Q)``.
Every partition is owned by exactly one physical node; which one is decided by a
deterministic *claim*, so every machine that knows the same membership computes
the same ring, with no randomness (tie-breaks use SHA-1 and sorted names).

The preference list of a key is the walk clockwise from the key's partition,
keeping each physical node the first time it appears. The first ``n`` nodes of
the walk are the key's primaries. The walk from every partition is precomputed,
so a lookup costs one SHA-1, one shift and a slice.

What the claim guarantees (``S`` nodes, ``t = min(target_n, S)``):

* Balance: every node owns ``floor(Q/S)`` or ``ceil(Q/S)`` partitions. This holds
  for rings built by ``Ring(...)``, ``with_node`` and ``without_node``. Rings
  decoded by ``from_data`` are taken as they are.
* Distinct neighbours: any ``t`` consecutive partitions, including the ones
  that wrap from partition ``Q-1`` to partition 0, belong to ``t`` different
  nodes. So the primaries of a key are the owners of ``n <= t`` consecutive
  partitions. The one case where this cannot be done is ``S == t`` with ``Q``
  not a multiple of ``S``, for example three nodes with ``target_n=3``. Then
  every ``S`` consecutive partitions would have to hold all ``S`` nodes, which
  forces a period of ``S`` that cannot close around a ring of ``Q`` slots. In
  that case a fresh claim repeats a node in exactly ``Q mod S`` pairs of
  partitions, all at the wrap, and nowhere else. Preference lists still hold
  ``n`` distinct nodes, because the walk skips repeats; the last replica of a
  key near the seam just comes from one partition further on. The claim was
  checked clash-free for ``target_n <= 5``, Q from 8 to 1024 and every S up to
  70 (sampled beyond), except where it is impossible: a node owning ``c``
  partitions needs ``c*t <= Q`` (``Q=8, target_n=5, S=6`` cannot work). For
  larger ``target_n`` with ``S == target_n + 1`` it may leave a few repeats.
* Incremental changes (``with_node``/``without_node``) never leave more
  repeated neighbours than a fresh claim of the same nodes has.
* Small movement when adding. ``with_node`` gives the new node exactly
  ``floor(Q/(S+1))`` partitions. It takes them from the nodes that own the
  most, at positions where the new node sits at least ``t`` slots from its own
  other partitions. If the old ring has distinct neighbours (``S > t``, or
  ``S`` divides ``Q``), nothing else moves. A ring that carries the unavoidable
  seam (``S == t``, see above) needs a few swaps to drop it: at most
  ``Q mod S`` of them with ``target_n=3``. With
  ``target_n >= 4`` and 3 or more seam repeats, swaps may not be enough and
  the ring is re-laid (see below). When ``S < target_n``, adding a node
  raises ``t``, and the layout must change shape: 2 -> 3 nodes moves about
  ``2Q/3`` partitions, whatever the algorithm.
* Small movement when removing. ``without_node`` hands exactly the removed
  node's partitions to the others, keeping balance and distinctness, whenever
  such a handoff exists. A bipartite matching with quotas decides that. Each
  freed slot needs a node outside its ``2*(t-1)`` near neighbours, so this is
  the normal case from ``S - 1 >= 2t - 1`` nodes on. Measured with
  ``target_n=3``: every removal from 7 to 16 nodes at ``Q=256``, and 97-99% of
  them at ``Q=64`` (the rest need 1-3 extra moves). From 6 nodes, a few percent
  need up to 8 extra moves. From 5 nodes, 10-30 extra moves. Going down to
  ``t`` or fewer nodes re-lays the ring (about ``2Q/3`` moves), because the
  smaller ring must be periodic.
* Where the plain steal or handoff falls short, the ring is repaired with
  swaps, or re-laid as a fresh claim that is rotated and relabelled to keep as
  many owners in place as it can. Whichever has fewer repeats wins, then
  whichever moves fewer partitions. Riak's ``choose_claim_v2`` also falls back
  to a full re-claim (``claim_rebalance_n``) when the incremental claim misses
  ``target_n_val``.

Partitions within one round of the fresh claim are laid out in SHA-1 order
(per-round rendezvous ranks), not round-robin. That spreads each node's
neighbours, and with them the fallbacks that take over a down node's keys,
over many nodes instead of always the same next ones. It also makes handoff on
removal possible at all: with round-robin, every partition of a node has the
same neighbours.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

__all__ = ["DEFAULT_PARTITIONS", "DEFAULT_TARGET_N", "HASH_BITS", "HASH_SPACE", "MAX_PARTITIONS", "Ring", "RingError"]

HASH_BITS = 160
HASH_SPACE = 1 << HASH_BITS
DEFAULT_PARTITIONS = 256
DEFAULT_TARGET_N = 3
MAX_PARTITIONS = 1 << 12   # Riak stops recommending at 1024; more makes claim and the walk table slow

_DATA_KEYS = frozenset({"partitions", "target_n", "owners"})


class RingError(ValueError):
    """A ring cannot be built, changed or decoded as asked."""


# --------------------------------------------------------------------------- validation


def _check_partitions(partitions: object) -> int:
    if isinstance(partitions, bool) or not isinstance(partitions, int):
        raise RingError(f"partitions must be an int, got {partitions!r}")
    if partitions < 8 or partitions & (partitions - 1):
        raise RingError(f"partitions must be a power of two >= 8, got {partitions}")
    if partitions > MAX_PARTITIONS:
        raise RingError(f"partitions must be at most {MAX_PARTITIONS}, got {partitions}")
    return partitions


def _check_target_n(target_n: object) -> int:
    if isinstance(target_n, bool) or not isinstance(target_n, int) or target_n < 1:
        raise RingError(f"target_n must be an int >= 1, got {target_n!r}")
    return target_n


def _check_node(node: object) -> str:
    if not isinstance(node, str) or not node:
        raise RingError(f"node names must be non-empty strings, got {node!r}")
    return node


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RingError(f"n must be an int >= 1, got {n!r}")
    return n


# --------------------------------------------------------------------------- neighbourhood arithmetic


@lru_cache(maxsize=64)
def _offsets(partitions: int, span: int) -> tuple[int, ...]:
    """Offsets (mod Q) of the slots less than ``span`` steps away from a slot, either way."""
    near = {d % partitions for d in range(1, span)} | {-d % partitions for d in range(1, span)}
    near.discard(0)
    return tuple(sorted(near))


def _clashes_at(owners: Sequence[str | None], i: int, offs: tuple[int, ...]) -> int:
    """How many of slot ``i``'s near neighbours have the same owner as ``i``."""
    q = len(owners)
    me = owners[i]
    return sum(1 for o in offs if owners[(i + o) % q] == me)


def _clashes(owners: Sequence[str | None], span: int) -> int:
    """Pairs of slots less than ``span`` apart (cyclically) that share an owner: 0 means distinct windows."""
    q = len(owners)
    offs = _offsets(q, span)
    return sum(_clashes_at(owners, i, offs) for i in range(q)) // 2


def _moved(new: Sequence[str], old: Sequence[str]) -> int:
    return sum(1 for a, b in zip(new, old) if a != b)


def _balanced(owners: Sequence[str], nodes: int) -> bool:
    counts = Counter(owners)
    return len(counts) == nodes and max(counts.values()) - min(counts.values()) <= 1


def _bounds(partitions: int, nodes: int) -> tuple[int, int]:
    """The partition counts a balanced ring of ``nodes`` nodes allows: floor and ceil of Q/S."""
    return partitions // nodes, -(-partitions // nodes)


# --------------------------------------------------------------------------- the fresh claim


@lru_cache(maxsize=4096)
def _round_order(nodes: tuple[str, ...], round_no: int) -> tuple[str, ...]:
    """This round's preference among nodes: SHA-1 rendezvous ranks, stable on every machine."""
    return tuple(sorted(nodes, key=lambda node: hashlib.sha1(f"{round_no}\x00{node}".encode()).digest()))


def _fill(prefix: Sequence[str], nodes: tuple[str, ...], partitions: int, span: int,
          rounds: int, extras: int, budget: int) -> list[str] | None:
    """Depth-first completion of a ring whose first ``len(prefix)`` slots are fixed.

    The open slots get every node ``rounds`` times plus ``extras`` nodes one more
    time, with no node repeated within ``span`` slots (cyclically, so the end is
    checked against the start). Candidates are tried earliest deadline first. A
    node's deadline is the last slot its next copy can take so that its remaining
    copies still fit, ``span`` apart, before its first slot comes round again.
    Ties go by the round's SHA-1 order. Returns None if no completion turns up
    within ``budget`` placements.
    """
    q, s = partitions, len(nodes)
    offs = _offsets(q, span)
    owners: list[str | None] = list(prefix) + [None] * (q - len(prefix))
    need = dict.fromkeys(nodes, rounds)
    spare = dict.fromkeys(nodes, True)
    first: dict[str, int] = {}
    for i, v in enumerate(prefix):
        first.setdefault(v, i)
    extras_left = extras
    never = 2 * q * (rounds + 2)

    def deadline(v: str) -> int:
        if v not in first:
            return never
        return q + first[v] - span - (need[v] - 1) * span

    def options(p: int) -> list[str]:
        due = [v for v in nodes if need[v] > 0]
        if any(deadline(v) < p for v in due):
            return []
        rank = {v: k for k, v in enumerate(_round_order(nodes, p // s))}
        due.sort(key=lambda v: (deadline(v), rank[v]))
        more = sorted((v for v in nodes if need[v] == 0 and spare[v]), key=rank.__getitem__) if extras_left else []
        return [v for v in due + more if all(owners[(p + o) % q] != v for o in offs)]

    start = len(prefix)
    if start == q:
        return list(prefix)
    trail: list[tuple[list[str], int, bool, bool]] = []   # (options, index tried, used an extra, set first)
    pos, opts, idx, steps = start, options(start), 0, 0
    while True:
        if idx < len(opts):
            v = opts[idx]
            used_extra = need[v] == 0
            if used_extra:
                spare[v] = False
                extras_left -= 1
            else:
                need[v] -= 1
            is_first = v not in first
            if is_first:
                first[v] = pos
            owners[pos] = v
            trail.append((opts, idx, used_extra, is_first))
            pos += 1
            steps += 1
            if pos == q:
                return [v for v in owners if v is not None]
            if steps > budget:
                return None
            opts, idx = options(pos), 0
        else:
            if not trail:
                return None
            pos -= 1
            undone = owners[pos]
            assert undone is not None
            owners[pos] = None
            opts, idx, used_extra, is_first = trail.pop()
            if used_extra:
                spare[undone] = True
                extras_left += 1
            else:
                need[undone] += 1
            if is_first:
                del first[undone]
            idx += 1


@lru_cache(maxsize=256)
def _fresh_layout(nodes: tuple[str, ...], partitions: int, target_n: int) -> tuple[str, ...]:
    """The claim for a new ring: whole rounds (each node once), then a partial round.

    Each round lists the nodes in that round's SHA-1 order, except that a node is
    pushed later in its round while it is still within ``t-1`` slots of its
    previous-round slot. With ``S >= t`` that always works inside a run of rounds.
    Only the end, where the partial round meets partition 0 again, can clash.
    Then the tail is searched again, widening from the partial round to whole
    rounds before it until a clash-free ending is found.
    """
    s, q = len(nodes), partitions
    span = min(target_n, s)
    rounds, rest = divmod(q, s)
    seq: list[str] = []
    for k in range(rounds + 1):
        order = list(_round_order(nodes, k))
        for _ in range(s if k < rounds else rest):
            recent = seq[len(seq) - span + 1:] if span > 1 else []
            pick = next((i for i, v in enumerate(order) if v not in recent), 0)
            seq.append(order.pop(pick))
    if span <= 1 or _clashes(seq, span) == 0:
        return tuple(seq)
    if span == s and rest:
        return tuple(seq)   # a period-S ring cannot close: Q mod S clashing pairs at the seam, as documented
    for back in range(min(rounds, 3) + 1):   # two whole rounds have always been enough for target_n <= 5
        start = (rounds - back) * s
        if start == q:
            continue
        done = _fill(seq[:start], nodes, q, span, back, rest, budget=64 * (q - start) + 1000)
        if done is not None and _clashes(done, span) == 0:
            return tuple(done)
    return tuple(seq)


# --------------------------------------------------------------------------- matching with quotas


def _match(adj: Sequence[Sequence[str]], low: Mapping[str, int], high: Mapping[str, int]) -> list[str] | None:
    """Give each left item one of its allowed right nodes so node ``z`` gets between low[z] and high[z].

    Kuhn's augmenting paths, run first with the lower quotas (which must all be
    filled) and then with the upper ones. Augmenting never lowers a node's load,
    so the first phase's guarantee survives the second. Deterministic: items and
    candidates are tried in the given order. Returns None if impossible.
    """
    assigned: list[str | None] = [None] * len(adj)
    holders: dict[str, list[int]] = {z: [] for z in high}

    def augment(u: int, cap: Mapping[str, int], seen: set[str]) -> bool:
        for z in adj[u]:
            if z in seen or cap.get(z, 0) <= 0:
                continue
            seen.add(z)
            if len(holders[z]) < cap[z]:
                holders[z].append(u)
                assigned[u] = z
                return True
            for w in list(holders[z]):
                if augment(w, cap, seen):
                    holders[z].remove(w)
                    holders[z].append(u)
                    assigned[u] = z
                    return True
        return False

    for u in range(len(adj)):
        augment(u, low, set())
    if sum(len(h) for h in holders.values()) != sum(low.values()):
        return None
    for u in range(len(adj)):
        if assigned[u] is None and not augment(u, high, set()):
            return None
    return [z for z in assigned if z is not None]


# --------------------------------------------------------------------------- incremental claim


def _steal(old: Sequence[str], new: str, target_n: int) -> list[str] | None:
    """The new node takes floor(Q/(S+1)) partitions from the fullest nodes, nothing else moves.

    The ring is cut into floor(Q/(S+1)) arcs of at least S+1 slots. The new node
    takes one slot in each arc, among the arc's first ``len - t + 1`` slots, so
    any two of its slots are at least ``t`` apart. Which donor gives up a slot
    in which arc is a matching with quotas. Each donor ends at floor or ceil of
    Q/(S+1). Arcs are shifted one slot at a time until a matching exists. If
    the old ring has clashes (the unavoidable seam of ``S == t``), the new node
    is steered onto them, and the shift that leaves the fewest clashes wins.
    """
    q = len(old)
    counts = Counter(old)
    total = len(counts) + 1
    span = min(target_n, total)
    take = q // total
    floor_, ceil_ = _bounds(q, total)
    low = {z: max(0, c - ceil_) for z, c in counts.items()}
    high = {z: max(0, c - floor_) for z, c in counts.items()}
    if sum(low.values()) > take or sum(high.values()) < take:
        return None   # the old ring was not balanced
    offs = _offsets(q, span)
    hot = {i for i in range(q) if _clashes_at(old, i, offs)}
    donors = sorted(counts, key=lambda z: (-counts[z], z))
    best: list[str] | None = None
    best_clashes = 0
    for shift in range(q // take):
        arcs = [(shift + j * q // take, (j + 1) * q // take - j * q // take) for j in range(take)]
        slots = [[(a + o) % q for o in range(length - span + 1)] for a, length in arcs]
        adj = []
        for arc in slots:
            owned = {old[p] for p in arc}
            fixes = {old[p] for p in arc if p in hot}
            adj.append(sorted((z for z in donors if high[z] > 0 and z in owned), key=lambda z: z not in fixes))
        chosen = _match(adj, low, high)
        if chosen is None:
            continue
        result = list(old)
        for arc, z in zip(slots, chosen):
            middle = len(arc) - 1
            pick = min((k for k, p in enumerate(arc) if old[p] == z),
                       key=lambda k: (arc[k] not in hot, abs(2 * k - middle), k))
            result[arc[pick]] = new
        clashes = _clashes(result, span) if hot else 0
        if best is None or clashes < best_clashes:
            best, best_clashes = result, clashes
        if best_clashes == 0:
            break
    return best


def _handoff(old: Sequence[str], gone: str, span: int) -> list[str] | None:
    """Give each of ``gone``'s partitions to a node that is not one of its near neighbours, keeping balance."""
    q = len(old)
    slots = [i for i, z in enumerate(old) if z == gone]
    counts = Counter(z for z in old if z != gone)
    floor_, ceil_ = _bounds(q, len(counts))
    low = {z: max(0, floor_ - c) for z, c in counts.items()}
    high = {z: max(0, ceil_ - c) for z, c in counts.items()}
    if sum(low.values()) > len(slots) or sum(high.values()) < len(slots):
        return None
    offs = _offsets(q, span)
    takers = sorted(counts, key=lambda z: (counts[z], z))
    adj = []
    for i in slots:
        near = {old[(i + o) % q] for o in offs}
        adj.append([z for z in takers if z not in near])
    chosen = _match(adj, low, high)
    if chosen is None:
        return None
    result = list(old)
    for i, z in zip(slots, chosen):
        result[i] = z
    return result


def _greedy_handoff(old: Sequence[str], gone: str, span: int) -> list[str]:
    """A balanced handoff that clashes as little as it can slot by slot (the start point for repair)."""
    q = len(old)
    owners: list[str | None] = [None if z == gone else z for z in old]
    counts = Counter(z for z in owners if z is not None)
    floor_, ceil_ = _bounds(q, len(counts))
    offs = _offsets(q, span)
    tops = q - floor_ * len(counts)        # how many nodes end at ceil
    tops -= sum(1 for c in counts.values() if c == ceil_ and ceil_ > floor_)
    for i in range(q):
        if owners[i] is not None:
            continue
        allowed = [z for z in sorted(counts) if counts[z] < floor_ or (counts[z] == floor_ < ceil_ and tops > 0)]
        if not allowed:
            allowed = sorted(counts, key=lambda z: (counts[z], z))[:1]
        best = min(allowed, key=lambda z: (sum(1 for o in offs if owners[(i + o) % q] == z),
                                           counts[z] >= floor_, counts[z], z))
        if counts[best] >= floor_:
            tops -= 1
        counts[best] += 1
        owners[i] = best
    return [z for z in owners if z is not None]


def _repair(owners: list[str], original: Sequence[str], span: int) -> list[str]:
    """Hill-climb clashes away with swaps (count-neutral) and ceil-to-floor moves (balance-neutral).

    Each step takes the first clashing slot that can be improved and applies its
    best move. Fewest clashes first, then fewest partitions away from
    ``original``. When no single move helps and only a few clashes are left, a
    sideways move next to a clash followed by an improving move is tried. Stops
    when clash-free or stuck.
    """
    q = len(owners)
    offs = _offsets(q, span)
    counts = Counter(owners)
    floor_, ceil_ = _bounds(q, len(counts))
    names = sorted(counts)
    Move = tuple[int, int, str]   # (i, j, b): swap slots i and j if j >= 0, else give slot i to b

    def flip(move: Move) -> None:
        i, j, b = move
        if j >= 0:
            owners[i], owners[j] = owners[j], owners[i]
        else:
            counts[owners[i]] -= 1
            counts[b] += 1
            owners[i] = b

    def score(move: Move) -> tuple[int, int]:
        """(change in clashes, change in partitions away from ``original``) if ``move`` were applied."""
        i, j, _ = move
        touched = (i, j) if j >= 0 else (i,)
        before = [owners[k] for k in touched]
        was = sum(_clashes_at(owners, k, offs) for k in touched)
        undo: Move = (i, j, owners[i])
        flip(move)
        now = sum(_clashes_at(owners, k, offs) for k in touched)
        after = [owners[k] for k in touched]
        flip(undo)
        cost = sum((x != original[k]) - (y != original[k]) for k, x, y in zip(touched, after, before))
        return now - was, cost

    def moves_of(i: int, partners: Iterable[int]) -> list[Move]:
        a = owners[i]
        found: list[Move] = [(i, j, "") for j in partners if owners[j] != a]
        if ceil_ > floor_ and counts[a] == ceil_:
            found += [(i, -1, b) for b in names if b != a and counts[b] == floor_]
        return found

    # Swap partners: the whole ring while that stays cheap (it finds the fewest moves), otherwise a window
    # around the clash that holds every node a few times over, so a step costs O(S) rather than O(Q).
    clashes = _clashes(owners, span)
    reach = q // 2 if q * clashes <= 300_000 else min(q // 2, 2 * len(names) + 2 * span)

    def best_fix(hot: list[int]) -> Move | None:
        for i in hot:
            partners = sorted({(i + d) % q for d in range(-reach, reach + 1)} - {i})
            improving = [(sc, m) for m in moves_of(i, partners) if (sc := score(m))[0] < 0]
            if improving:
                return min(improving, key=lambda x: (x[0], x[1][1], x[1][2]))[1]
        return None

    for _ in range(4 * clashes + 8):
        hot = [i for i in range(q) if _clashes_at(owners, i, offs)]
        if not hot:
            break
        move = best_fix(hot)
        if move is not None:
            flip(move)
            continue
        if len(hot) > 2 * span:
            break
        fixed = False
        for i in hot:
            near = sorted({(i + o) % q for o in _offsets(q, 2 * span)})
            for first in moves_of(i, near):
                if score(first)[0] > 0:
                    continue
                undo: Move = (first[0], first[1], owners[first[0]])
                flip(first)
                second = best_fix([k for k in range(q) if _clashes_at(owners, k, offs)])
                if second is not None:
                    flip(second)
                    fixed = True
                    break
                flip(undo)
            if fixed:
                break
        if not fixed:
            break
    return owners


def _realign(layout: Sequence[str], old: Sequence[str]) -> list[str]:
    """A fresh claim rotated and relabelled (greedily) to keep as many old owners in place as it can."""
    q = len(layout)
    names = sorted(set(layout))
    best: tuple[int, int] | None = None
    best_map: dict[str, str] = {}
    for k in range(0, q, max(1, q // 256)):   # at most 256 rotations: O(256 Q) even for big rings
        rotated = list(layout[k:]) + list(layout[:k])
        weight = Counter(zip(rotated, old))
        mapping: dict[str, str] = {}
        taken: set[str] = set()
        kept = 0
        for (label, owner), c in sorted(weight.items(), key=lambda kv: (-kv[1], kv[0])):
            if label in mapping or owner in taken or owner not in names:
                continue
            mapping[label] = owner
            taken.add(owner)
            kept += c
        spare = iter(v for v in names if v not in taken)
        for label in names:
            if label not in mapping:
                mapping[label] = next(spare)
        if best is None or kept > best[0]:
            best, best_map = (kept, k), mapping
    assert best is not None
    k = best[1]
    return [best_map[v] for v in list(layout[k:]) + list(layout[:k])]


def _choose(options: Iterable[list[str]], old: Sequence[str], span: int) -> list[str]:
    """The option with the fewest clashes, then the fewest moved partitions (then the first)."""
    return min(options, key=lambda o: (_clashes(o, span), _moved(o, old)))


def _settle(old: Sequence[str], candidate: list[str] | None, nodes: tuple[str, ...], target_n: int) -> list[str]:
    """Keep ``candidate`` if it is as clash-free as a fresh claim; else the best of repairing it and re-laying.

    Repair is skipped where it cannot reach a fresh claim's quality: with as
    many nodes as ``t`` the ring must be (almost) periodic, which a few swaps do
    not make out of a different layout.
    """
    q = len(old)
    span = min(target_n, len(nodes))
    layout = _fresh_layout(nodes, q, target_n)
    if candidate is not None and not _balanced(candidate, len(nodes)):
        candidate = None   # only when the old ring was not balanced (a hand-made table from from_data)
    if candidate is not None and _clashes(candidate, span) <= _clashes(layout, span):
        return candidate
    options = [_realign(layout, old)]
    if candidate is not None and len(nodes) > span and _clashes(candidate, span) <= q // 2:
        options.append(_repair(candidate, old, span))
    return _choose(options, old, span)


def _grow(old: Sequence[str], new: str, target_n: int) -> list[str]:
    nodes = tuple(sorted(set(old) | {new}))
    return _settle(old, _steal(old, new, target_n), nodes, target_n)


def _shrink(old: Sequence[str], gone: str, target_n: int) -> list[str]:
    nodes = tuple(sorted(set(old) - {gone}))
    span = min(target_n, len(nodes))
    candidate = _handoff(old, gone, span)
    if candidate is None:
        candidate = _greedy_handoff(old, gone, span)
    return _settle(old, candidate, nodes, target_n)


# --------------------------------------------------------------------------- the ring


def _walks(owners: Sequence[str], size: int) -> tuple[tuple[str, ...], ...]:
    """For every partition, all nodes in order of first appearance walking clockwise from it."""
    q = len(owners)
    first: list[str] = []
    seen: set[str] = set()
    i = 0
    while len(first) < size:
        v = owners[i % q]
        if v not in seen:
            seen.add(v)
            first.append(v)
        i += 1
    table: list[tuple[str, ...]] = [()] * q
    walk = tuple(first)
    table[0] = walk
    for i in range(q - 1, 0, -1):
        v = owners[i]
        walk = (v,) + tuple(x for x in walk if x != v)
        table[i] = walk
    return tuple(table)


def _ring_from_data(data: dict[str, Any]) -> Ring:
    return Ring.from_data(data)


# Every request hashes its key (SHA-1) to find its replicas: the hashes of recent keys are kept,
# up to HASH_CACHE of them (then forgotten all at once). A hash depends on the key alone.
HASH_CACHE = 1 << 14
_HASHES: dict[str, int] = {}


class Ring:
    """An immutable partition ring: who owns each of Q partitions, and preference lists from it."""

    __slots__ = ("_shift", "_table", "nodes", "owners", "partitions", "target_n")

    nodes: tuple[str, ...]
    partitions: int
    target_n: int
    owners: tuple[str, ...]
    _shift: int
    _table: tuple[tuple[str, ...], ...] | None

    def __init__(self, nodes: Iterable[str], partitions: int = DEFAULT_PARTITIONS,
                 target_n: int = DEFAULT_TARGET_N) -> None:
        if isinstance(nodes, (str, bytes)):
            raise RingError(f"nodes must be an iterable of names, not one name {nodes!r}")
        names = [_check_node(v) for v in nodes]
        if not names:
            raise RingError("a ring needs at least one node")
        dupes = sorted(v for v, c in Counter(names).items() if c > 1)
        if dupes:
            raise RingError(f"duplicate nodes: {', '.join(dupes)}")
        q = _check_partitions(partitions)
        t = _check_target_n(target_n)
        if q < len(names):
            raise RingError(f"{len(names)} nodes need at least as many partitions, got {q}")
        self._setup(_fresh_layout(tuple(sorted(names)), q, t), q, t)

    def _setup(self, owners: Sequence[str], partitions: int, target_n: int) -> None:
        set_ = object.__setattr__
        set_(self, "owners", tuple(owners))
        set_(self, "nodes", tuple(sorted(set(owners))))
        set_(self, "partitions", partitions)
        set_(self, "target_n", target_n)
        set_(self, "_shift", HASH_BITS - (partitions.bit_length() - 1))
        set_(self, "_table", None)

    @classmethod
    def _of(cls, owners: Sequence[str], partitions: int, target_n: int) -> Ring:
        ring = cls.__new__(cls)
        ring._setup(owners, partitions, target_n)
        return ring

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Ring is immutable (tried to set {name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Ring is immutable (tried to delete {name})")

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        return _ring_from_data, (self.to_data(),)

    # ----------------------------------------------------------------------- lookups

    @property
    def _walk_table(self) -> tuple[tuple[str, ...], ...]:
        table = self._table
        if table is None:
            table = _walks(self.owners, len(self.nodes))
            object.__setattr__(self, "_table", table)
        return table

    @staticmethod
    def key_hash(key: str | bytes) -> int:
        """SHA-1 of the key's UTF-8 bytes (bytes are hashed as they are), as an int in [0, 2**160)."""
        if isinstance(key, str):
            data = key.encode("utf-8")
        elif isinstance(key, (bytes, bytearray, memoryview)):
            data = bytes(key)
        else:
            raise TypeError(f"keys are str or bytes, got {type(key).__name__}")
        return int.from_bytes(hashlib.sha1(data).digest(), "big")

    def partition_of(self, key: str | bytes) -> int:
        """The partition ``key`` hashes into: ``key_hash(key) // (2**160 // Q)``."""
        if type(key) is str:
            khash = _HASHES.get(key)
            if khash is None:
                if len(_HASHES) >= HASH_CACHE:
                    _HASHES.clear()
                khash = _HASHES[key] = self.key_hash(key)
            return khash >> self._shift
        return self.key_hash(key) >> self._shift

    def partition_of_hash(self, khash: int) -> int:
        """The partition of a key whose ``key_hash`` is known already."""
        return khash >> self._shift

    def walk(self, partition: int) -> tuple[str, ...]:
        """All nodes in clockwise order of first appearance starting at ``partition``."""
        return self._walk_table[partition % self.partitions]

    def primaries(self, key: str, n: int) -> list[str]:
        """The first ``min(n, S)`` distinct nodes clockwise from the key's partition."""
        return list(self._walk_table[self.partition_of(key)][:_check_n(n)])

    def preference_list(self, key: str, n: int, down: Collection[str] = ()) -> list[tuple[str, str | None]]:
        """Sloppy-quorum targets: up to ``n`` ``(node, hint_for)`` pairs.

        A primary that is up stands for itself (``hint_for`` is None). A primary
        that is down is replaced, in its own slot, by the next healthy node
        further along the walk that is not used yet (``hint_for`` names the
        primary). With too few healthy nodes the list is shorter. It never holds
        a down node and never repeats one.
        """
        walk = self._walk_table[self.partition_of(key)]
        n = _check_n(n)
        if not down:
            return [(v, None) for v in walk[:n]]
        out_of_service = down if isinstance(down, (set, frozenset)) else frozenset(down)
        spares = (v for v in walk[n:] if v not in out_of_service)
        result: list[tuple[str, str | None]] = []
        for v in walk[:n]:
            if v not in out_of_service:
                result.append((v, None))
            else:
                stand_in = next(spares, None)
                if stand_in is not None:
                    result.append((stand_in, v))
        return result

    # ----------------------------------------------------------------------- membership changes

    def with_node(self, node: str, target_n: int | None = None) -> Ring:
        """A new ring with ``node`` added: it takes floor(Q/(S+1)) partitions from the fullest nodes.

        ``target_n`` (default: this ring's) is the new ring's: a larger one re-lays what it must so that
        any ``min(target_n, S)`` consecutive partitions have distinct owners again."""
        node = _check_node(node)
        if node in self.nodes:
            raise RingError(f"node {node!r} is already in the ring")
        if len(self.nodes) + 1 > self.partitions:
            raise RingError(f"{len(self.nodes) + 1} nodes need at least as many partitions, got {self.partitions}")
        t = self.target_n if target_n is None else _check_target_n(target_n)
        return Ring._of(_grow(self.owners, node, t), self.partitions, t)

    def without_node(self, node: str) -> Ring:
        """A new ring with ``node`` removed: its partitions are handed to the others."""
        if node not in self.nodes:
            raise RingError(f"unknown node {node!r}; members are {', '.join(self.nodes)}")
        if len(self.nodes) == 1:
            raise RingError(f"cannot remove {node!r}: it is the last node and a ring needs at least one")
        return Ring._of(_shrink(self.owners, node, self.target_n), self.partitions, self.target_n)

    # ----------------------------------------------------------------------- statistics

    def share(self) -> dict[str, float]:
        """The fraction of partitions each node owns."""
        counts = Counter(self.owners)
        return {v: counts[v] / self.partitions for v in self.nodes}

    def replica_share(self, n: int) -> dict[str, float]:
        """The fraction of (partition, replica) slots each node holds as one of the first ``n`` primaries."""
        width = min(_check_n(n), len(self.nodes))
        counts: Counter[str] = Counter()
        for walk in self._walk_table:
            counts.update(walk[:width])
        total = self.partitions * width
        return {v: counts[v] / total for v in self.nodes}

    # ----------------------------------------------------------------------- encoding

    def to_data(self) -> dict[str, Any]:
        """Builtins only, for gossip and pickling: ``{"partitions", "target_n", "owners"}``."""
        return {"partitions": self.partitions, "target_n": self.target_n, "owners": list(self.owners)}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Ring:
        """Decode :meth:`to_data` output, checking its shape. Any ownership table of valid names is accepted."""
        if not isinstance(data, Mapping):
            raise RingError(f"ring data must be a dict, got {type(data).__name__}")
        keys = set(data)
        if keys != _DATA_KEYS:
            missing, extra = sorted(_DATA_KEYS - keys), sorted(map(str, keys - _DATA_KEYS))
            raise RingError(f"ring data needs exactly {sorted(_DATA_KEYS)}; missing {missing}, unexpected {extra}")
        q = _check_partitions(data["partitions"])
        t = _check_target_n(data["target_n"])
        owners = data["owners"]
        if not isinstance(owners, (list, tuple)):
            raise RingError(f"owners must be a list, got {type(owners).__name__}")
        if len(owners) != q:
            raise RingError(f"owners lists {len(owners)} partitions, expected {q}")
        return cls._of([_check_node(v) for v in owners], q, t)

    # ----------------------------------------------------------------------- identity

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return self.partitions == other.partitions and self.owners == other.owners

    def __hash__(self) -> int:
        return hash((self.partitions, self.owners))

    def __repr__(self) -> str:
        return f"Ring(nodes={list(self.nodes)!r}, partitions={self.partitions}, target_n={self.target_n})"
