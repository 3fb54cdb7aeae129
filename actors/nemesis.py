"""Nemesis: faults injected into a ``LocalCluster`` on a seeded schedule, Jepsen style.

    faults = expand(["partition", "kill", "slow"])
    schedule = plan(cluster.nodes, faults, seed=7, count=20)     # pure: same seed, same faults
    nemesis = Nemesis(cluster, faults, history, seed=7, interval=5.0)
    nemesis.start()        # quiet interval/2, then fault, interval, heal, interval, fault ...
    ...
    healed_at = nemesis.stop()   # heal everything (a fault still in force too): resume, restart, unskew

Fault kinds (``--nemesis`` names; ``partition`` means every partition shape, ``degrade``
loss + duplicate + reorder, ``all`` everything):

    halves     the nodes split in two random halves (a minority and a majority)
    isolate    one node cut off from every other
    bridge     two halves, plus one node that sees both (it is in no partition group)
    ring       majorities ring: on a random cyclic order each node sees only its nearest
               neighbours, a majority, and no two nodes see the same majority
    kill       kill -9 of 1..N-1 nodes (never all); healed by restarting them
    pause      SIGSTOP of 1..N/2 nodes; healed by SIGCONT
    slow       every message to and from 1..N/2 nodes delayed 20..200 ms
    loss       a share of the messages some nodes send is lost
    duplicate  ... sent twice
    reorder    ... held a random 0..reorder_ms, so they overtake each other
    clock      1..N/2 nodes' clocks moved by up to ±5 min (matters once LWW exists)
    join       a new node joins the ring (``cluster.add_node``) and gets its share of the keys
    leave      a random member leaves (``cluster.decommission``): it hands its data off and exits;
               skipped when fewer members than the largest n in use would be left

``membership`` means join + leave. A membership change is not healed: the ring keeps it,
and every later fault acts on the members of the day. A join is skipped while the cluster
has ``max_members`` members. ``ring_changes`` lists the changes made, in order, so that the
harness can rebuild the ring the nodes use; ``on_members`` hears the new member addresses.

Only one fault is in force at a time: each is healed before the next. Every fault and heal
is recorded in the history as a ``nemesis`` op.

The ring cannot be written as ``cluster.partition`` groups (a group is a clique that
blocks everybody else named, and a node can be in only one group), so it sets each
node's blocked peers with ``cluster.block``, keeping the cluster's record of faults (what
``heal``, ``restart`` and ``wait_until_converged`` read) consistent with what was sent.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from .errors import InvalidRequest, LeaderlessError
from .history import History

log = logging.getLogger(__name__)

PARTITIONS = ("halves", "isolate", "bridge", "ring")
MEMBERSHIP = ("join", "leave")
FAULTS = PARTITIONS + ("kill", "pause", "slow", "loss", "duplicate", "reorder", "clock") + MEMBERSHIP
ALIASES = {"partition": PARTITIONS, "degrade": ("loss", "duplicate", "reorder"), "membership": MEMBERSHIP,
           "all": FAULTS}
NEMESES = tuple(sorted(set(FAULTS) | set(ALIASES)))

_NETWORK = set(PARTITIONS) | {"slow", "loss", "duplicate", "reorder"}


class Fault(NamedTuple):
    """One fault of a schedule (a pure value: applying it is ``Nemesis``' job)."""

    kind: str
    """One of ``FAULTS``."""
    nodes: tuple[str, ...] = ()
    """The nodes it acts on (for ``ring``: every node, in ring order)."""
    groups: tuple[tuple[str, ...], ...] = ()
    """Partition groups (halves, isolate, bridge); nodes in no group reach everybody."""
    amount: float = 0.0
    """Delay in ms (slow), rate (loss, duplicate), ms (reorder), seconds (clock)."""
    skipped: str = ""
    """Why a membership change was not made (too few or too many members); empty when it was."""

    def describe(self) -> str:
        nodes = ",".join(self.nodes)
        if self.skipped:
            return f"{self.kind} skipped: {self.skipped}"
        if self.kind == "join":
            return f"join {nodes or '(a new node)'}"
        if self.kind == "leave":
            return f"leave {nodes} (decommission)"
        groups = " | ".join(",".join(g) for g in self.groups)
        if self.kind in ("halves", "isolate"):
            return f"partition {self.kind}: {groups}"
        if self.kind == "bridge":
            return f"partition bridge: {groups} with {nodes} seeing both sides"
        if self.kind == "ring":
            return f"partition ring: {'-'.join(self.nodes)} (each sees its neighbours)"
        if self.kind == "kill":
            return f"kill -9 {nodes}"
        if self.kind == "pause":
            return f"pause (SIGSTOP) {nodes}"
        if self.kind == "slow":
            return f"slow {nodes} by {self.amount:g} ms"
        if self.kind in ("loss", "duplicate"):
            return f"{self.kind} {self.amount:.0%} of messages from {nodes}"
        if self.kind == "reorder":
            return f"reorder messages from {nodes} (held up to {self.amount:g} ms)"
        if self.kind == "clock":
            return f"clock skew {nodes} {self.amount:+g} s"
        return f"{self.kind} {nodes}"

    def to_json(self) -> dict[str, Any]:
        out = {"kind": self.kind, "nodes": list(self.nodes), "groups": [list(g) for g in self.groups],
               "amount": self.amount, "description": self.describe()}
        if self.skipped:
            out["skipped"] = self.skipped
        return out


def expand(names: Iterable[str]) -> tuple[str, ...]:
    """Fault kinds for nemesis names (aliases expanded, order kept, no repeats); ValueError on unknown ones."""
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        if name not in NEMESES:
            raise ValueError(f"unknown nemesis {raw.strip()!r}; choose from {', '.join(NEMESES)}")
        for kind in ALIASES.get(name, (name,)):
            if kind not in out:
                out.append(kind)
    if not out:
        raise ValueError(f"no nemesis given; choose from {', '.join(NEMESES)}")
    return tuple(out)


def choose(kind: str, nodes: Sequence[str], rng: random.Random) -> Fault:
    """One fault of ``kind`` on ``nodes``, its targets and sizes drawn from ``rng``."""
    nodes = list(nodes)
    count = len(nodes)
    shuffled = rng.sample(nodes, count)
    few = rng.randint(1, max(1, count // 2))
    if kind == "ring" and count < 4:
        kind = "halves"                       # with 3 nodes every majority ring is the whole cluster
    if kind == "halves":
        cut = count // 2
        return Fault(kind, groups=(tuple(sorted(shuffled[:cut])), tuple(sorted(shuffled[cut:]))))
    if kind == "isolate":
        return Fault(kind, nodes=(shuffled[0],), groups=((shuffled[0],), tuple(sorted(shuffled[1:]))))
    if kind == "bridge":
        bridge, rest = shuffled[0], shuffled[1:]
        cut = len(rest) // 2
        return Fault(kind, nodes=(bridge,), groups=(tuple(sorted(rest[:cut])), tuple(sorted(rest[cut:]))))
    if kind == "ring":
        return Fault(kind, nodes=tuple(shuffled))
    if kind == "kill":
        return Fault(kind, nodes=tuple(sorted(shuffled[:rng.randint(1, max(1, count - 1))])))
    if kind == "pause":
        return Fault(kind, nodes=tuple(sorted(shuffled[:few])))
    if kind == "slow":
        return Fault(kind, nodes=tuple(sorted(shuffled[:few])), amount=float(rng.choice((20, 50, 100, 200))))
    if kind in ("loss", "duplicate", "reorder"):
        targets = tuple(sorted(shuffled[:rng.randint(1, count)]))
        amount = {"loss": (0.05, 0.1, 0.2, 0.3), "duplicate": (0.1, 0.3, 0.5), "reorder": (10, 50, 100)}[kind]
        return Fault(kind, nodes=targets, amount=float(rng.choice(amount)))
    if kind == "clock":
        return Fault(kind, nodes=tuple(sorted(shuffled[:few])),
                     amount=float(rng.choice((-1, 1)) * rng.choice((1, 10, 60, 300))))
    if kind == "join":
        return Fault(kind)                    # the nemesis names the new node when it starts it
    if kind == "leave":
        return Fault(kind, nodes=(shuffled[0],))
    raise ValueError(f"unknown fault kind {kind!r}; choose from {', '.join(FAULTS)}")


def schedule(nodes: Sequence[str] | Callable[[], Sequence[str]], faults: Sequence[str], seed: int
             ) -> Iterable[Fault]:
    """The endless fault sequence for ``seed``: each fault's kind, then its targets, from one ``Random``.

    ``nodes`` may be a function giving the members of the day (they change with joins and
    leaves): each fault is drawn on the members when it is drawn."""
    if not faults:
        raise ValueError("a schedule needs at least one fault kind")
    rng = random.Random(seed)
    while True:
        yield choose(rng.choice(list(faults)), nodes() if callable(nodes) else nodes, rng)


def plan(nodes: Sequence[str], faults: Sequence[str], seed: int, count: int) -> list[Fault]:
    """The first ``count`` faults of the schedule for ``seed`` (same seed, same list)."""
    out: list[Fault] = []
    for fault in schedule(nodes, faults, seed):
        if len(out) == count:
            break
        out.append(fault)
    return out


def ring_blocked(order: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Majorities ring on ``order``: each node's blocked peers (all but its nearest neighbours).

    Each node sees itself and the ``reach`` nodes on either side, where ``2 * reach + 1`` is
    the smallest odd number that is a majority; blocking is symmetric.
    """
    count = len(order)
    majority = count // 2 + 1
    reach = majority // 2
    blocked: dict[str, tuple[str, ...]] = {}
    for i, node in enumerate(order):
        near = {order[(i + step) % count] for step in range(-reach, reach + 1)}
        blocked[node] = tuple(sorted(n for n in order if n not in near))
    return blocked


class Nemesis:
    """Applies a seeded schedule of faults to a cluster from a background thread."""

    def __init__(self, cluster: Any, faults: Sequence[str], history: History, *, seed: int = 0,
                 interval: float = 5.0, progress: Callable[[str], None] | None = None, min_members: int = 3,
                 max_members: int | None = None,
                 on_members: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cluster = cluster
        self.min_members = min_members
        """A leave that would leave fewer members is skipped (the largest n in use, at least 3)."""
        self.max_members = max_members if max_members is not None else len(cluster.nodes) + 2
        """A join is skipped while the cluster has this many members."""
        self.on_members = on_members
        self.ring_changes: list[tuple[str, str]] = []   # ("join" | "leave", node), in order
        self._names = set(cluster.nodes)                # every name ever used: a joiner gets a new one
        self.faults = tuple(faults)
        self.history = history
        self.seed = seed
        self.interval = interval
        self.progress = progress or (lambda line: None)
        self.applied: list[dict[str, Any]] = []   # every fault, when it began and ended
        self.active: Fault | None = None           # the fault in force now, if any
        self.errors: list[str] = []
        self._schedule = iter(schedule(lambda: self.cluster.nodes, self.faults, seed))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._killed: set[str] = set()
        self._paused: set[str] = set()
        self._skewed: set[str] = set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 90.0) -> float:
        """Stop the schedule, then heal everything; returns when (history time) the heal finished."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            if self._thread.is_alive():
                self.errors.append(f"the nemesis thread did not stop within {timeout}s")
        return self.heal_all()

    def _run(self) -> None:
        """Fault k begins at ``interval / 2 + 2k * interval`` and is healed ``interval`` later, on
        absolute times, so a slow step (a restart) does not shift the rest of the schedule. A fault
        still in force when ``stop`` comes is left to the final heal."""
        began = time.monotonic()
        for k in itertools.count():
            fault_at = began + self.interval / 2 + 2 * k * self.interval
            if self._stop.wait(max(0.0, fault_at - time.monotonic())):
                return
            fault = self._resolve(next(self._schedule))
            record = {"fault": fault.to_json(), "started": round(self.history.now(), 3), "ended": None}
            self.applied.append(record)
            self.active = fault
            self._act("start", fault, self._apply)
            if self._stop.wait(max(0.0, fault_at + self.interval - time.monotonic())):
                return                                # the final heal ends it
            self._act("stop", fault, self._heal)
            self.active = None
            record["ended"] = round(self.history.now(), 3)

    def _act(self, action: str, fault: Fault, do: Callable[[Fault], None]) -> None:
        handle = self.history.invoke("nemesis", "nemesis", None, {"action": action, **fault.to_json()})
        label = "fault" if action == "start" else ("done " if fault.kind in MEMBERSHIP else "heal ")
        self.progress(f"{self.history.now():7.1f}s  {label}  {fault.describe()}")
        try:
            do(fault)
        except Exception as exc:                   # keep the schedule going; the final heal cleans up
            message = f"{action} {fault.describe()}: {type(exc).__name__}: {exc}"
            log.warning("nemesis: %s", message, exc_info=not isinstance(exc, LeaderlessError))
            self.errors.append(message)
            self.history.complete(handle, "fail", str(exc))
        else:
            self.history.complete(handle, "ok")

    # --- applying and healing one fault ---------------------------------------------------

    def _resolve(self, fault: Fault) -> Fault:
        """A membership change made concrete: the joiner's name, or why it is skipped."""
        members = len(self.cluster.nodes)
        if fault.kind == "join":
            if members >= self.max_members:
                return fault._replace(skipped=f"{members} members already (at most {self.max_members})")
            number = max((int(n[1:]) for n in self._names if n[1:].isdigit()), default=0) + 1
            return fault._replace(nodes=(f"n{number}",))
        if fault.kind == "leave" and members - 1 < self.min_members:
            return fault._replace(skipped=f"{members - 1} members would be left, fewer than the largest n in use "
                                          f"({self.min_members})")
        return fault

    def _apply(self, fault: Fault) -> None:
        cluster = self.cluster
        kind = fault.kind
        if fault.skipped:
            return
        if kind == "join":
            self._join(fault.nodes[0])
        elif kind == "leave":
            self._leave(fault.nodes[0])
        elif kind in ("halves", "isolate", "bridge"):
            cluster.partition(*fault.groups)
        elif kind == "ring":
            self._block(ring_blocked(fault.nodes))
        elif kind == "kill":
            for node in fault.nodes:
                self._killed.add(node)
                cluster.kill(node)
        elif kind == "pause":
            for node in fault.nodes:
                self._paused.add(node)
                cluster.pause(node)
        elif kind == "slow":
            for node in fault.nodes:
                cluster.slow(node, delay_ms=fault.amount)
        elif kind in ("loss", "duplicate", "reorder"):
            field = {"loss": "loss", "duplicate": "duplicate", "reorder": "reorder_ms"}[kind]
            for node in fault.nodes:
                cluster.degrade(node, **{field: fault.amount})
        elif kind == "clock":
            for node in fault.nodes:
                self._skewed.add(node)
                cluster.skew_clock(node, fault.amount)
        else:
            raise ValueError(f"unknown fault kind {kind!r}")

    def _heal(self, fault: Fault) -> None:
        cluster = self.cluster
        if fault.kind in _NETWORK:
            cluster.heal()
        elif fault.kind == "kill":
            self._restart_killed()
        elif fault.kind == "pause":
            self._resume_paused()
        elif fault.kind == "clock":
            for node in sorted(self._skewed):
                cluster.skew_clock(node, 0.0)
                self._skewed.discard(node)

    def _join(self, name: str) -> None:
        self._names.add(name)
        try:
            self.cluster.add_node(name=name, timeout=30.0)
        finally:
            if name in self.cluster.config.nodes and self._in_ring(name):
                self.ring_changes.append(("join", name))
                self._members_changed()

    def _leave(self, name: str) -> None:
        try:
            self.cluster.decommission(name, timeout=60.0)
        except InvalidRequest as exc:           # refused: it would go below an n in use (not an error)
            self.progress(f"{self.history.now():7.1f}s  leave of {name} refused: {exc}")
            return
        finally:
            if not self._in_ring(name):
                self.ring_changes.append(("leave", name))
                self._await_ring()
                self._members_changed()

    def _in_ring(self, name: str) -> bool:
        """Whether the members that answer have ``name`` in their ring (the latest change they know)."""
        status = [s for s in self.cluster.status().values() if s.get("up")]
        newest = max((s.get("ring_version", 0) for s in status), default=0)
        return any(name in s.get("ring_nodes", ()) for s in status if s.get("ring_version", 0) == newest)

    def _await_ring(self, timeout: float = 30.0) -> None:
        """Wait until every running member uses the ring the changes so far give (its node set)."""
        deadline = time.monotonic() + timeout
        while True:
            status = {n: s for n, s in self.cluster.status().items() if self.cluster.is_running(n)}
            expected = sorted(status)
            if all(s.get("up") and sorted(s.get("ring_nodes", ())) == expected for s in status.values()):
                return
            if time.monotonic() > deadline:
                raise LeaderlessError(f"the ring did not settle on {', '.join(expected)} within {timeout:g}s")
            time.sleep(0.05)

    def _members_changed(self) -> None:
        if self.on_members is not None:
            self.on_members(self.cluster.addresses)

    def _block(self, blocked: dict[str, tuple[str, ...]]) -> None:
        """Set every node's blocked peers (what ``partition`` groups cannot say)."""
        self.cluster.block(blocked)

    def _restart_killed(self) -> None:
        for node in sorted(self._killed):
            if not self.cluster.is_running(node):
                self.cluster.restart(node, wait=False)
            self._killed.discard(node)
        self.cluster.wait_until_converged([n for n in self.cluster.nodes if self.cluster.is_running(n)])

    def _resume_paused(self) -> None:
        for node in sorted(self._paused):
            self.cluster.resume(node)
            self._paused.discard(node)

    def heal_all(self) -> float:
        """Resume paused nodes, heal the network, unskew clocks, restart killed nodes; wait until all see all.

        Each step runs even when an earlier one failed (the failure is recorded in ``errors``).
        """
        handle = self.history.invoke("nemesis", "nemesis", None, {"action": "heal-all"})
        self.progress(f"{self.history.now():7.1f}s  heal   everything (final)")
        cluster = self.cluster
        failures: list[str] = []

        def unskew() -> None:
            for node in cluster.nodes:
                if node in self._skewed or cluster.faults(node).get("clock_skew"):
                    cluster.skew_clock(node, 0.0)
            self._skewed.clear()

        def restart() -> None:
            for node in cluster.nodes:
                if not cluster.is_running(node):
                    if node not in self._killed:
                        self.errors.append(f"node {node} was not running though the nemesis did not kill it")
                    cluster.restart(node, wait=False)
            self._killed.clear()

        steps = [("resume", lambda: [cluster.resume(n) for n in cluster.nodes if cluster.is_running(n)]),
                 ("heal the network", cluster.heal),     # nodes restarted below start clean too
                 ("unskew clocks", unskew),
                 ("restart killed nodes", restart),
                 ("wait until every node sees every other", lambda: cluster.wait_until_converged(
                     cluster.nodes, timeout=60.0))]
        self._paused.clear()
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 -- every step runs; failures are reported
                failures.append(f"final heal: {what}: {type(exc).__name__}: {exc}")
        self.errors += failures
        self.history.complete(handle, "fail" if failures else "ok", "; ".join(failures) or None)
        if self.applied and self.applied[-1]["ended"] is None:
            self.applied[-1]["ended"] = round(self.history.now(), 3)
        return self.history.now()


__all__ = ["ALIASES", "FAULTS", "MEMBERSHIP", "NEMESES", "PARTITIONS", "Fault", "Nemesis", "choose", "expand", "plan",
           "ring_blocked", "schedule"]
