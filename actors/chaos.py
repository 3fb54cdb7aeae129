"""Chaos runs: a fresh cluster, a workload, a nemesis, then a verdict from the checkers.

    from actors.chaos import run_chaos
    result = run_chaos(nodes=5, nemesis=("partition", "kill", "slow"), workload="set", time_s=60, seed=7)
    assert result["valid"] and result["converged"]

A run: start a fresh ``LocalCluster`` (fast repair timers), start the workload and the
nemesis, let them run ``time_s``; stop the nemesis (it heals everything: resumes paused
nodes, restarts killed ones, removes every network fault and clock skew), stop the
workload; wait (at most ``convergence_timeout``) until every primary replica of every key
holds the same data and exactly those primaries hold a copy (fallbacks handed off, moved
keys dropped), timing it from the final heal; read every key at R=all; check.

``bucket_n`` (with ``r`` and ``w``) gives the workload a bucket of its own n; the key's
primaries and copy count follow it, and the ring the nodes use after the nemesis' joins
and leaves (``current_ring``).

The long matrix (20 seeds x 60 s, every nemesis, one line per run, then a summary); each
seed takes its workload, n, R and W from a fixed rotation (``matrix_spec``):

    python -m actors.chaos --matrix                      # --seeds 20 --time 60 --nemesis all
    python -m actors.chaos --matrix --seeds 3 --time 20  # a short subset
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .checker import check_convergence
from .cluster import LocalCluster
from .errors import ClusterUnavailable, InvalidRequest, LeaderlessError
from .history import History
from .nemesis import NEMESES, Nemesis, expand
from .ring import Ring
from .workloads import LWW_WORKLOADS, MODES, WORKLOADS, make_workload

FAST_REPAIR: dict[str, Any] = {"aae_interval": 0.05, "hint_interval": 0.1, "handoff_interval": 0.2}
"""Repair timers of a chaos cluster: hints and anti-entropy run often, so healing is quick."""
MIN_NODES = 3


class OptionError(ValueError):
    """A bad run option; ``option`` names it (``nodes``, ``nemesis``, ``workload``, ``time``, ``n``...)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def parse_nemesis(nemesis: str | Iterable[str]) -> tuple[str, ...]:
    """Fault kinds from ``"partition,kill"`` or a list of names; ``OptionError`` on unknown ones."""
    names = nemesis.split(",") if isinstance(nemesis, str) else list(nemesis)
    try:
        return expand(names)
    except ValueError as exc:
        raise OptionError("nemesis", str(exc)) from None


BUCKET_TYPES = {"set": "siblings", "orset": "set", "map": "map", "register": "siblings", "counter": "counter",
                "delete": "siblings"}
"""The bucket type each workload writes to (``--mode lww`` turns siblings into lww)."""


def check_options(nodes: int, nemesis: str | Iterable[str], workload: str, time_s: float, n: int = 3,
                  interval: float | None = None, mode: str = "siblings", bucket_n: int | None = None,
                  r: int | str | None = None, w: int | str | None = None) -> tuple[str, ...]:
    """Validate a run's options (``OptionError``, one clear sentence); returns the fault kinds."""
    if nodes < MIN_NODES:
        raise OptionError("nodes", f"a chaos run needs at least {MIN_NODES} nodes, got {nodes}")
    if not 1 <= n <= nodes:
        raise OptionError("n", f"n={n} must be between 1 and the {nodes} nodes")
    if bucket_n is not None and not 1 <= bucket_n <= nodes:
        raise OptionError("bucket-n", f"bucket n={bucket_n} must be between 1 and the {nodes} nodes")
    for name, quorum in (("r", r), ("w", w)):
        if isinstance(quorum, int) and not 1 <= quorum:
            raise OptionError(name, f"{name}={quorum} must be at least 1")
    if workload not in WORKLOADS:
        raise OptionError("workload", f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    if mode not in MODES:
        raise OptionError("mode", f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if mode != "siblings" and workload not in LWW_WORKLOADS:
        raise OptionError("mode", f"the {workload} workload uses a {BUCKET_TYPES[workload]} bucket; --mode {mode} "
                                  f"applies to {', '.join(LWW_WORKLOADS)}")
    if not time_s > 0:
        raise OptionError("time", f"time must be a positive number of seconds, got {time_s}")
    if interval is not None and not interval > 0:
        raise OptionError("interval", f"interval must be a positive number of seconds, got {interval}")
    return parse_nemesis(nemesis)


def default_interval(time_s: float) -> float:
    """Seconds each fault lasts (and each quiet spell between faults): about time/12, within 3..5 s
    (less only for runs shorter than 9 s).

    At least about 3 s because a fault must outlast failure detection (phi accrual sees a
    silent peer down after about 2 s): a shorter partition or pause ends before any node
    sees another down, so sloppy quorums, fallbacks and hinted handoff are never exercised.
    Chosen as ``time_s / (2k + 1)`` so that the run ends in the middle of fault k: the final
    heal then heals a fault in force, and the convergence time measures real healing.
    """
    target = max(3.0, min(5.0, time_s / 12))
    k = max(1, round((time_s / target - 1) / 2))
    return max(0.8, time_s / (2 * k + 1))


def run_chaos(nodes: int = 5, nemesis: str | Iterable[str] = ("partition", "kill", "slow"), workload: str = "set",
              time_s: float = 60.0, seed: int = 7, data_dir: str | Path | None = None, n: int = 3,
              r: int | str = 2, w: int | str = 2, *, mode: str = "siblings", bucket_n: int | None = None,
              interval: float | None = None, progress: Callable[[str], None] | None = None,
              convergence_timeout: float = 60.0, history_path: str | Path | None = None,
              workload_options: Mapping[str, Any] | None = None, max_members: int | None = None,
              ) -> dict[str, Any]:
    """One chaos run on a fresh cluster; returns the verdict (see the module docstring).

    ``n``, ``r``, ``w``: the cluster's (r and w capped at n). ``bucket_n``: the n of the
    workload's own bucket, created with ``r`` and ``w`` capped at it (None: the cluster's n;
    ``set`` and ``register`` then use the default bucket). ``mode`` is the bucket type the
    set, register and delete workloads write to: ``siblings`` or ``lww`` (lossy by design:
    the verdict then measures the loss). ``max_members``: joins stop there (default nodes+2).
    Raises ``InvalidRequest`` for bad options and ``LeaderlessError`` when the cluster
    cannot be started. ``history_path`` keeps the whole history as JSON.
    """
    try:
        faults = check_options(nodes, nemesis, workload, time_s, n, interval, mode, bucket_n, r, w)
    except OptionError as exc:
        raise InvalidRequest(str(exc)) from None
    if data_dir is not None and (Path(data_dir) / "cluster.json").exists():
        raise InvalidRequest(f"{data_dir} already holds a cluster; a chaos run needs a fresh data dir")
    interval = interval or default_interval(time_s)
    say = progress or (lambda line: None)
    started = time.monotonic()
    say(f"starting {nodes} nodes (n={n}, r={r}, w={w}); workload {workload} ({mode}"
        f"{f', bucket n={bucket_n}' if bucket_n is not None else ''}); nemesis {','.join(faults)}; "
        f"seed {seed}; {time_s:g} s, faults every {interval:.2f} s")
    with LocalCluster(nodes=nodes, n=n, r=_cap(r, n), w=_cap(w, n), data_dir=data_dir, **FAST_REPAIR) as cluster:
        history = History()                       # its clock starts with the workload
        load = make_workload(workload, cluster, history, seed=seed, mode=mode, n=bucket_n, r=r, w=w,
                             **dict(workload_options or {}))
        chaos = Nemesis(cluster, faults, history, seed=seed, interval=interval, progress=say,
                        min_members=max(MIN_NODES, n, bucket_n or 0), max_members=max_members,
                        on_members=load.members_changed)
        try:
            load.start()
            chaos.start()
            _run_for(time_s, history, say)
        finally:
            try:
                healed_at = chaos.stop()
                say(f"{history.now():7.1f}s  healed; stopping the workload")
            finally:
                load.stop()
        stopped_at = history.now()
        say(f"{history.now():7.1f}s  waiting for every replica to converge (at most {convergence_timeout:g} s)")
        convergence = await_convergence(cluster, load.replicas(), timeout=convergence_timeout,
                                        changes=chaos.ring_changes,
                                        progress=lambda line: say("  waiting " + line.strip()))
        convergence_s = round(stopped_at - healed_at + convergence["waited_s"], 2) \
            if convergence["converged"] else None
        say(f"{history.now():7.1f}s  " + (f"converged {convergence_s} s after the final heal"
                                          if convergence_s is not None else "did NOT converge"))
        with cluster.client(timeout=5.0) as client:
            finals = load.final_reads(client, r="all")
        verdict = load.check(finals)
        if history_path is not None:
            history.dump(history_path)
        errors = chaos.errors + load.errors
        members = list(cluster.nodes)
    bucket = load.describe_bucket()
    result = {
        "valid": bool(verdict["valid"]),
        "converged": bool(convergence["converged"]),
        "convergence_s": convergence_s,
        "acknowledged": verdict["acknowledged"],
        "lost": verdict["lost"],
        "lost_fraction": round(verdict["lost"] / verdict["acknowledged"], 4) if verdict["acknowledged"] else 0.0,
        "unexpected": verdict["unexpected"],
        "resurrected": verdict.get("resurrected", 0),
        "over_counted": verdict.get("over_counted", 0),
        "recovered": verdict.get("recovered", 0),
        "copies_exact": bool(convergence.get("copies_exact", False)),
        "copy_failures": convergence.get("copy_failures", 0),
        "stale_reads": verdict.get("stale_reads", 0),
        "stale_reads_by_fault": stale_by_fault(verdict.pop("stale_read_times", []), chaos.applied),
        "seed": seed,
        "nemesis": list(faults),
        "workload": workload,
        "mode": load.bucket_type,
        "bucket": bucket,
        "attempted": verdict["attempted"],
        "indeterminate": verdict["indeterminate"],
        "nodes": nodes, "n": n, "r": r, "w": w, "bucket_n": bucket["n"],
        "members": members,
        "membership": [list(change) for change in chaos.ring_changes],
        "time_s": time_s,
        "interval_s": round(interval, 3),
        "elapsed_s": round(time.monotonic() - started, 1),
        "workload_stopped_s": round(stopped_at - healed_at, 2),
        "final_heal_ended": chaos.active.describe() if chaos.active is not None else None,
        "ops": history.counts(),
        "faults": chaos.applied,
        "errors": errors,
        "checker": verdict,
        "convergence": convergence,
        "history": str(history_path) if history_path is not None else None,
    }
    return result


def _cap(quorum: int | str, n: int) -> int | str:
    return min(quorum, n) if isinstance(quorum, int) else quorum


def stale_by_fault(times: Iterable[float], faults: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many stale reads began while each kind of fault was in force (``none``: between faults)."""
    windows = [(f["started"], f["ended"] if f["ended"] is not None else float("inf"), f["fault"]["kind"])
               for f in faults]
    counts: dict[str, int] = {}
    for t in times:
        kind = next((k for start, end, k in windows if start <= t <= end), "none")
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def _run_for(time_s: float, history: History, say: Callable[[str], None]) -> None:
    """Let the workload and nemesis run ``time_s``, with an op count now and then."""
    deadline = time.monotonic() + time_s
    every = max(2.0, time_s / 6)
    next_report = time.monotonic() + every
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))
        if time.monotonic() >= next_report:
            next_report += every
            counts = history.counts()
            totals = {o: sum(c[o] for k, c in counts.items() if k != "nemesis") for o in ("ok", "info", "fail")}
            say(f"{history.now():7.1f}s  ops: {totals['ok']} ok, {totals['info']} indeterminate, "
                f"{totals['fail']} failed")


def current_ring(cluster: LocalCluster, changes: Iterable[tuple[str, str]] = ()) -> Ring:
    """The ring the nodes use after ``changes`` (``("join" | "leave", node)``, in order), rebuilt as
    they build it: the first ring of the cluster's configuration, then ``with_node``/``without_node``."""
    nodes = cluster.config.initial_ring_nodes()
    ring = Ring(nodes, partitions=cluster.config.partitions, target_n=min(cluster.config.n, len(nodes)))
    for action, node in changes:
        ring = ring.with_node(node) if action == "join" else ring.without_node(node)
    return ring


def _keys_with_n(cluster: LocalCluster, keys: Iterable[str] | Mapping[str, int]) -> dict[str, int]:
    if isinstance(keys, Mapping):
        return {key: int(n) for key, n in keys.items()}
    return {key: cluster.config.n for key in keys}


def primaries_of(cluster: LocalCluster, keys: Iterable[str] | Mapping[str, int],
                 changes: Iterable[tuple[str, str]] = ()) -> dict[str, list[str]]:
    """Every key's primary replicas on the ring the running nodes use.

    ``keys`` are storage keys (``bucket\\0key``), or a mapping of them to their bucket's n (a
    plain iterable: the cluster's n). ``changes``: the membership changes made so far (see
    ``current_ring``). Raises ``ClusterUnavailable`` when no node answers, or when a node that
    answers uses another member set than those changes give (a change not adopted yet).
    """
    wanted = _keys_with_n(cluster, keys)
    ring = current_ring(cluster, changes)
    status = cluster.status()
    up = [s for s in status.values() if s.get("up")]
    if not up:
        raise ClusterUnavailable("no node answers: cannot find the ring")
    behind = sorted(s["name"] for s in up if sorted(s.get("ring_nodes", ())) != sorted(ring.nodes))
    if behind:
        raise ClusterUnavailable(f"{', '.join(behind)} do not use the ring of {', '.join(ring.nodes)} yet")
    members = len(ring.nodes)
    return {key: ring.primaries(key, min(n, members)) for key, n in wanted.items()}


def await_convergence(cluster: LocalCluster, keys: Iterable[str] | Mapping[str, int], timeout: float = 60.0,
                      poll: float = 0.1, progress: Callable[[str], None] | None = None,
                      changes: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """Poll ``inspect`` on every member until every key's primaries hold identical data and exactly they
    hold a copy (``check_convergence(copies=True)``), or ``timeout``.

    ``keys``: storage keys, or a mapping of them to their n (see ``primaries_of``); ``changes``:
    the membership changes made (the ring follows them). Returns the last verdict plus
    ``waited_s`` and ``polls``; ``progress`` hears which keys still differ, about once a second.
    """
    wanted = _keys_with_n(cluster, keys)
    changes = list(changes)
    started = time.monotonic()
    next_report = started + 1.0
    polls = 0
    verdict: dict[str, Any] = {"converged": False}
    while True:
        polls += 1
        try:
            primaries = primaries_of(cluster, wanted, changes)
            inspections: dict[str, dict[str, Any]] = {}
            for node in cluster.nodes:
                try:
                    inspections[node] = {key: cluster.inspect(node, key) for key in wanted}
                except LeaderlessError:
                    continue                       # counted as divergent ("unknown") this round
            verdict = check_convergence(inspections, primaries, copies=True)
            if len(inspections) < len(cluster.nodes):
                verdict["converged"] = False
                verdict["error"] = f"could not inspect {', '.join(sorted(set(cluster.nodes) - set(inspections)))}"
        except LeaderlessError as exc:
            verdict = {"converged": False, "error": str(exc)}
        waited = time.monotonic() - started
        if verdict["converged"] or waited >= timeout:
            return {**verdict, "waited_s": round(waited, 2), "polls": polls}
        if progress is not None and time.monotonic() >= next_report:
            next_report += 1.0
            differ = verdict.get("divergent_keys") or {}
            wrong = verdict.get("wrong_copies") or {}
            text = "; ".join([f"{_printable(key)} on "
                              + ", ".join(f"{node}={_short(state)}" for node, state in states.items())
                              for key, states in differ.items()]
                             + [f"{_printable(key)} held by {', '.join(c['holders'])} (primaries "
                                f"{', '.join(c['primaries'])})" for key, c in wrong.items()])
            progress(f"{waited:7.1f}s  still differing: " + (text or verdict.get("error", "?")))
        time.sleep(poll)


def _printable(key: str) -> str:
    return key.replace("\x00", "/")


def _short(state: Any) -> str:
    if isinstance(state, dict):
        return f"{state['values']}v/{state['digest'][:4]}" + ("/tomb" if state["tombstone"] else "")
    return str(state)


# --- presenting a verdict --------------------------------------------------------------------

def passed(result: Mapping[str, Any]) -> bool:
    """A run passes when the checker found it valid and every replica converged."""
    return bool(result.get("valid")) and bool(result.get("converged"))


def spec_of(result: Mapping[str, Any], pad: bool = True) -> str:
    """What ran, in a few words: workload, bucket type, n, R, W (e.g. ``orset set n=2 R1 W2``);
    ``pad`` aligns the words in columns (the matrix's lines)."""
    bucket = result.get("bucket") or {}
    width = 8 if pad else 0
    kind = bucket.get("type", result.get("mode", ""))
    return (f"{result['workload']:<{width}} {kind:<{width}} n={bucket.get('n', result.get('n'))} "
            f"R{bucket.get('r', result.get('r'))} W{bucket.get('w', result.get('w'))}")


def summary_line(result: Mapping[str, Any]) -> str:
    """One line per run (the matrix prints these)."""
    verdict = "PASS" if passed(result) else "FAIL"
    conv = f"{result['convergence_s']:.1f}s" if result.get("convergence_s") is not None else "never"
    errors = f"  errors {len(result['errors'])}" if result.get("errors") else ""
    unread = (result.get("checker") or {}).get("unread_keys")
    errors += f"  unread keys {len(unread)}" if unread else ""
    by_fault = result.get("stale_reads_by_fault") or {}
    where = f" ({', '.join(f'{k} {v}' for k, v in by_fault.items())})" if by_fault else ""
    copies = "exact" if result.get("copies_exact") else f"{result.get('copy_failures', '?')} wrong"
    members = result.get("membership") or []
    changes = f" ({', '.join(f'{a} {n}' for a, n in members)})" if members else ""
    return (f"{verdict}  seed {result['seed']:>3}  {spec_of(result)}  valid={result['valid']}  "
            f"converged={result['converged']} ({conv})  copies {copies}  acknowledged {result['acknowledged']}  "
            f"lost {result['lost']}  unexpected {result['unexpected']}  resurrected {result.get('resurrected', 0)}  "
            f"over-counted {result.get('over_counted', 0)}  recovered {result['recovered']}  "
            f"stale reads {result['stale_reads']}{where}  faults {len(result['faults'])}{changes}  "
            f"({result['elapsed_s']:.0f}s){errors}")


def verdict_table(result: Mapping[str, Any]) -> Any:
    """The verdict as a rich ``Table``."""
    from rich.table import Table

    ok = passed(result)
    table = Table(title=f"chaos verdict: {'[green]PASS[/green]' if ok else '[red]FAIL[/red]'}")
    table.add_column("field")
    table.add_column("value", justify="right")

    def flag(good: bool, text: str) -> str:
        return f"[green]{text}[/green]" if good else f"[red]{text}[/red]"

    conv = result.get("convergence_s")
    bucket = result.get("bucket") or {}
    rows = [
        ("valid", flag(result["valid"], str(result["valid"]))),
        ("acknowledged", str(result["acknowledged"])),
        ("lost", flag(result["lost"] == 0, f"{result['lost']} ({result.get('lost_fraction', 0):.2%})")),
        ("unexpected", flag(result["unexpected"] == 0, str(result["unexpected"]))),
        ("resurrected (removed or deleted, back)", flag(result.get("resurrected", 0) == 0,
                                                        str(result.get("resurrected", 0)))),
        ("over-counted (counter reads above the attempted sum)", flag(result.get("over_counted", 0) == 0,
                                                                      str(result.get("over_counted", 0)))),
        ("recovered (indeterminate, present)", str(result["recovered"])),
        ("indeterminate", str(result.get("indeterminate", ""))),
        ("converged", flag(result["converged"], str(result["converged"]))),
        ("copies (exactly the n primaries hold each key)",
         flag(bool(result.get("copies_exact")), "exact" if result.get("copies_exact")
              else f"{result.get('copy_failures', '?')} keys wrong")),
        ("convergence after heal", f"{conv:.2f} s" if conv is not None else "[red]never[/red]"),
        ("stale reads", f"{result['stale_reads']} of {result['checker'].get('reads', '?')}"),
        ("stale reads by fault", ", ".join(f"{k} {v}" for k, v in result.get("stale_reads_by_fault", {}).items())
         or "-"),
        ("faults injected", str(len(result["faults"]))),
        ("membership changes", ", ".join(f"{a} {n}" for a, n in result.get("membership") or ()) or "-"),
        ("workload (mode) / nemesis",
         f"{result['workload']} ({result.get('mode', 'siblings')}) / {','.join(result['nemesis'])}"),
        ("nodes, cluster n/r/w", f"{result['nodes']}, {result['n']}/{result['r']}/{result['w']}"),
        ("bucket: name, n/r/w",
         f"{bucket.get('name') or '(default)'}, {bucket.get('n')}/{bucket.get('r')}/{bucket.get('w')}"),
        ("seed", str(result["seed"])),
        ("elapsed", f"{result['elapsed_s']} s"),
    ]
    if result.get("errors"):
        rows.append(("errors", flag(False, str(len(result["errors"])))))
    for name, value in rows:
        table.add_row(name, value)
    return table


# --- the command line: click glue for `leaderless chaos`, and the matrix ------------------------

def one_line_usage_error(message: str, param_hint: str) -> Exception:
    """A ``click.BadParameter`` (exit code 2) that prints one line, not the usage block."""
    import click

    class OneLineBadParameter(click.BadParameter):
        def show(self, file: Any = None) -> None:
            click.echo(f"Error: {self.format_message()}", err=True)

    return OneLineBadParameter(message, param_hint=param_hint)


MATRIX_SPECS: tuple[tuple[str, int, int, int], ...] = (
    # workload,  n, R, W        every workload 3-4 times; every (R, W) in 1..3 x 1..3; n from 1 to 5
    ("set", 3, 2, 2),
    ("orset", 2, 1, 2),
    ("map", 5, 3, 3),
    ("register", 3, 1, 3),
    ("counter", 3, 3, 1),
    ("delete", 1, 1, 1),
    ("orset", 3, 1, 1),
    ("map", 3, 2, 1),
    ("set", 5, 2, 3),
    ("counter", 2, 1, 1),
    ("delete", 3, 3, 1),
    ("register", 2, 2, 1),
    ("orset", 5, 3, 2),
    ("map", 2, 1, 2),
    ("counter", 3, 1, 3),
    ("set", 1, 1, 1),
    ("delete", 4, 2, 3),
    ("orset", 1, 1, 1),
    ("map", 4, 3, 2),
    ("register", 5, 1, 1),
)
"""The matrix's rotation: seed s runs ``MATRIX_SPECS[(s - 1) % 20]``."""


def matrix_spec(seed: int, nodes: int = 5, cluster_n: int = 3) -> dict[str, Any]:
    """The workload, bucket n, R and W the matrix gives ``seed`` (n capped at the nodes; the cluster's
    n means the default bucket for set and register)."""
    workload, n, r, w = MATRIX_SPECS[(seed - 1) % len(MATRIX_SPECS)]
    n = min(n, nodes)
    return {"workload": workload, "bucket_n": None if n == min(cluster_n, nodes) else n, "r": min(r, n),
            "w": min(w, n)}


def matrix(seeds: Iterable[int], *, nodes: int = 5, nemesis: str | Iterable[str] = "all",
           workload: str | None = None, time_s: float = 60.0, out: Callable[[str], None] = print,
           save: str | Path | None = None, bucket_n: int | None = None, r: int | str | None = None,
           w: int | str | None = None, **options: Any) -> list[dict[str, Any]]:
    """One run per seed; prints a line per run and a final summary; returns the results.

    Each seed's workload, bucket n, R and W come from ``matrix_spec``, except those given here.
    ``save``: a directory that receives each run's whole verdict as ``seed-N.json``.
    """
    results: list[dict[str, Any]] = []
    for seed in seeds:
        spec = matrix_spec(seed, nodes, options.get("n", 3))
        given = {"workload": workload, "bucket_n": bucket_n, "r": r, "w": w}
        spec.update({k: v for k, v in given.items() if v is not None})
        try:
            result = run_chaos(nodes=nodes, nemesis=nemesis, time_s=time_s, seed=seed, **spec, **options)
        except LeaderlessError as exc:
            out(f"FAIL  seed {seed:>3}  {spec}  could not run: {type(exc).__name__}: {exc}")
            results.append({"seed": seed, "valid": False, "converged": False, "error": str(exc), **spec})
            continue
        except KeyboardInterrupt:
            out(f"interrupted during seed {seed}")
            results.append({"seed": seed, "valid": False, "converged": False, "error": "interrupted"})
            break
        out(summary_line(result))
        results.append(result)
        if save is not None:
            Path(save).mkdir(parents=True, exist_ok=True)
            (Path(save) / f"seed-{seed}.json").write_text(json.dumps(result, default=str, indent=1))
    for line in matrix_summary(results):
        out(line)
    return results


def matrix_summary(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The matrix's closing lines: runs, acknowledged ops per workload, error totals, slowest convergence."""
    ran = [r for r in results if "acknowledged" in r]
    per_workload: dict[str, list[int]] = {}
    for r in ran:
        per_workload.setdefault(r["workload"], []).append(r["acknowledged"])
    slowest = max((r for r in ran if r.get("convergence_s") is not None), key=lambda r: r["convergence_s"],
                  default=None)
    joins = sum(1 for r in ran for a, _ in r.get("membership") or () if a == "join")
    leaves = sum(1 for r in ran for a, _ in r.get("membership") or () if a == "leave")
    return [
        (f"{len(results)} runs: {sum(passed(r) for r in results)} passed, "
         f"{sum(bool(r.get('valid')) for r in results)} valid, "
         f"{sum(bool(r.get('converged')) for r in results)} converged, "
         f"{sum(bool(r.get('copies_exact')) for r in results)} with exact copy counts"),
        "acknowledged operations: " + ", ".join(f"{name} {sum(acks)} ({len(acks)} runs)"
                                                for name, acks in sorted(per_workload.items()))
        + f"; total {sum(r['acknowledged'] for r in ran)}",
        (f"lost {sum(r['lost'] for r in ran)}, unexpected {sum(r['unexpected'] for r in ran)}, "
         f"resurrected {sum(r.get('resurrected', 0) for r in ran)}, "
         f"over-counted {sum(r.get('over_counted', 0) for r in ran)}, "
         f"copy-count failures {sum(r.get('copy_failures', 0) for r in ran)}; "
         f"recovered {sum(r['recovered'] for r in ran)}, stale reads {sum(r['stale_reads'] for r in ran)}; "
         f"membership changes: {joins} joins, {leaves} leaves"),
        "slowest convergence: " + (f"{slowest['convergence_s']:.1f} s after the final heal (seed {slowest['seed']}, "
                                   f"{spec_of(slowest, pad=False)})" if slowest is not None else "none converged"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.chaos", description="Chaos runs against a local cluster.")
    parser.add_argument("--matrix", action="store_true", help="run SEEDS runs (seeds FIRST-SEED...) and summarize")
    parser.add_argument("--seeds", type=int, default=20, help="runs in the matrix (default 20)")
    parser.add_argument("--first-seed", type=int, default=1, help="the matrix's first seed (default 1)")
    parser.add_argument("--seed", type=int, default=7, help="seed of a single run (default 7)")
    parser.add_argument("--time", type=float, default=60.0, help="seconds per run (default 60)")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--nemesis", default=None,
                        help=f"comma-separated, from {', '.join(NEMESES)} (default: all for the matrix, "
                             "partition,kill,slow for a single run)")
    parser.add_argument("--workload", default=None,
                        help=f"one of {', '.join(WORKLOADS)} (default: the matrix's rotation; set for a single run)")
    parser.add_argument("--mode", default="siblings",
                        help=f"bucket type of {', '.join(LWW_WORKLOADS)}: {', '.join(MODES)}")
    parser.add_argument("--n", type=int, default=3, help="the cluster's n (default 3)")
    parser.add_argument("--bucket-n", type=int, default=None,
                        help="n of the workload's own bucket (default: the matrix's rotation; the cluster's n)")
    parser.add_argument("--r", default=None, help="read quorum (default: the matrix's rotation; 2)")
    parser.add_argument("--w", default=None, help="write quorum (default: the matrix's rotation; 2)")
    parser.add_argument("--verbose", action="store_true", help="print every fault as it happens (stderr)")
    parser.add_argument("--save", default=None, help="matrix: a directory for each run's whole verdict (JSON)")
    args = parser.parse_args(argv)
    nemesis = args.nemesis or ("all" if args.matrix else "partition,kill,slow")
    r, w = _quorum_arg(args.r), _quorum_arg(args.w)
    try:
        check_options(args.nodes, nemesis, args.workload or "set", args.time, args.n, mode=args.mode,
                      bucket_n=args.bucket_n, r=r, w=w)
    except OptionError as exc:
        parser.error(str(exc))
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.verbose else None
    if args.matrix:
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        results = matrix(seeds, nodes=args.nodes, nemesis=nemesis, workload=args.workload, time_s=args.time,
                         out=lambda line: print(line, flush=True), progress=progress, mode=args.mode,
                         save=args.save, bucket_n=args.bucket_n, r=r, w=w, n=args.n)
        return 0 if all(passed(r) for r in results) else 1
    result = run_chaos(nodes=args.nodes, nemesis=nemesis, workload=args.workload or "set", time_s=args.time,
                       seed=args.seed, progress=progress, mode=args.mode, n=args.n, bucket_n=args.bucket_n,
                       r=2 if r is None else r, w=2 if w is None else w)
    print(json.dumps(result, default=str))
    return 0 if passed(result) else 1


def _quorum_arg(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


__all__ = ["BUCKET_TYPES", "FAST_REPAIR", "MATRIX_SPECS", "OptionError", "await_convergence", "check_options",
           "current_ring", "default_interval", "matrix", "matrix_spec", "matrix_summary", "parse_nemesis", "passed",
           "primaries_of", "run_chaos", "spec_of", "stale_by_fault", "summary_line", "verdict_table"]


if __name__ == "__main__":
    sys.exit(main())
