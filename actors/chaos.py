"""Chaos runs: a fresh cluster, a workload, a nemesis, then a verdict from the checkers.

    from actors.chaos import run_chaos
    result = run_chaos(nodes=5, nemesis=("partition", "kill", "slow"), workload="set", time_s=60, seed=7)
    assert result["valid"] and result["converged"]

A run: start a fresh ``LocalCluster`` (fast repair timers), start the workload and the
nemesis, let them run ``time_s``; stop the nemesis (it heals everything: resumes paused
nodes, restarts killed ones, removes every network fault and clock skew), stop the
workload; wait (at most ``convergence_timeout``) until every primary replica of every key
holds the same data, timing it from the final heal; read every key at R=all; check.

The long matrix (20 seeds x 60 s, every nemesis, one line per run, then a summary):

    python -m actors.chaos --matrix                      # --seeds 20 --time 60 --nemesis all
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .checker import check_convergence
from .cluster import LocalCluster
from .errors import InvalidRequest, LeaderlessError
from .history import History
from .nemesis import NEMESES, Nemesis, expand
from .ring import Ring
from .workloads import MODES, WORKLOADS, make_workload

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


def check_options(nodes: int, nemesis: str | Iterable[str], workload: str, time_s: float, n: int = 3,
                  interval: float | None = None, mode: str = "siblings") -> tuple[str, ...]:
    """Validate a run's options (``OptionError``, one clear sentence); returns the fault kinds."""
    if nodes < MIN_NODES:
        raise OptionError("nodes", f"a chaos run needs at least {MIN_NODES} nodes, got {nodes}")
    if not 1 <= n <= nodes:
        raise OptionError("n", f"n={n} must be between 1 and the {nodes} nodes")
    if workload not in WORKLOADS:
        raise OptionError("workload", f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    if mode not in MODES:
        raise OptionError("mode", f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if mode != "siblings" and workload == "counter":
        raise OptionError("mode", f"the counter workload uses a counter bucket; --mode {mode} applies to set and "
                                  "register")
    if not time_s > 0:
        raise OptionError("time", f"time must be a positive number of seconds, got {time_s}")
    if interval is not None and not interval > 0:
        raise OptionError("interval", f"interval must be a positive number of seconds, got {interval}")
    return parse_nemesis(nemesis)


def default_interval(time_s: float) -> float:
    """Seconds each fault lasts (and each quiet spell between faults): about time/12, within 0.8..5 s.

    Chosen as ``time_s / (2k + 1)`` so that the run ends in the middle of fault k: the final
    heal then heals a fault in force, and the convergence time measures real healing.
    """
    target = max(1.0, min(5.0, time_s / 12))
    k = max(1, round((time_s / target - 1) / 2))
    return max(0.8, time_s / (2 * k + 1))


def run_chaos(nodes: int = 5, nemesis: str | Iterable[str] = ("partition", "kill", "slow"), workload: str = "set",
              time_s: float = 60.0, seed: int = 7, data_dir: str | Path | None = None, n: int = 3,
              r: int | str = 2, w: int | str = 2, *, mode: str = "siblings", interval: float | None = None,
              progress: Callable[[str], None] | None = None, convergence_timeout: float = 60.0,
              history_path: str | Path | None = None, workload_options: Mapping[str, Any] | None = None,
              ) -> dict[str, Any]:
    """One chaos run on a fresh cluster; returns the verdict (see the module docstring).

    ``mode`` is the bucket type the set and register workloads write to: ``siblings`` or
    ``lww`` (lossy by design: the verdict then measures the loss). Raises ``InvalidRequest``
    for bad options and ``LeaderlessError`` when the cluster cannot be started.
    ``history_path`` keeps the whole history as JSON.
    """
    try:
        faults = check_options(nodes, nemesis, workload, time_s, n, interval, mode)
    except OptionError as exc:
        raise InvalidRequest(str(exc)) from None
    if data_dir is not None and (Path(data_dir) / "cluster.json").exists():
        raise InvalidRequest(f"{data_dir} already holds a cluster; a chaos run needs a fresh data dir")
    interval = interval or default_interval(time_s)
    say = progress or (lambda line: None)
    started = time.monotonic()
    say(f"starting {nodes} nodes (n={n}, r={r}, w={w}); workload {workload} ({mode}); nemesis {','.join(faults)}; "
        f"seed {seed}; {time_s:g} s, faults every {interval:.2f} s")
    with LocalCluster(nodes=nodes, n=n, r=r, w=w, data_dir=data_dir, **FAST_REPAIR) as cluster:
        history = History()                       # its clock starts with the workload
        load = make_workload(workload, cluster, history, seed=seed, mode=mode, **dict(workload_options or {}))
        chaos = Nemesis(cluster, faults, history, seed=seed, interval=interval, progress=say)
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
        convergence = await_convergence(cluster, load.keys, timeout=convergence_timeout,
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
    result = {
        "valid": bool(verdict["valid"]),
        "converged": bool(convergence["converged"]),
        "convergence_s": convergence_s,
        "acknowledged": verdict["acknowledged"],
        "lost": verdict["lost"],
        "lost_fraction": round(verdict["lost"] / verdict["acknowledged"], 4) if verdict["acknowledged"] else 0.0,
        "unexpected": verdict["unexpected"],
        "recovered": verdict.get("recovered", 0),
        "stale_reads": verdict.get("stale_reads", 0),
        "stale_reads_by_fault": stale_by_fault(verdict.pop("stale_read_times", []), chaos.applied),
        "seed": seed,
        "nemesis": list(faults),
        "workload": workload,
        "mode": load.bucket_type,
        "attempted": verdict["attempted"],
        "indeterminate": verdict["indeterminate"],
        "nodes": nodes, "n": n, "r": r, "w": w,
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


def primaries_of(cluster: LocalCluster, keys: Iterable[str]) -> dict[str, list[str]]:
    """Every key's primary replicas, on the ring the running nodes use."""
    status = cluster.status()
    up = [s for s in status.values() if s.get("up")]
    if not up:
        raise InvalidRequest("no node answers: cannot find the ring")
    ring_nodes = up[0]["ring_nodes"]
    n = cluster.config.n
    ring = Ring(ring_nodes, partitions=cluster.config.partitions, target_n=min(n, len(ring_nodes)))
    return {key: ring.primaries(key, n) for key in keys}


def await_convergence(cluster: LocalCluster, keys: Iterable[str], timeout: float = 60.0,
                      poll: float = 0.1, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Poll ``inspect`` on every key's primaries until they hold identical data, or ``timeout``.

    Returns ``check_convergence``'s verdict plus ``waited_s`` and ``polls``; ``progress``
    hears which keys still differ, about once a second.
    """
    keys = list(keys)
    started = time.monotonic()
    next_report = started + 1.0
    polls = 0
    verdict: dict[str, Any] = {"converged": False}
    while True:
        polls += 1
        try:
            primaries = primaries_of(cluster, keys)
            inspections: dict[str, dict[str, Any]] = {}
            for node in cluster.nodes:
                wanted = [key for key, owners in primaries.items() if node in owners]
                try:
                    inspections[node] = {key: cluster.inspect(node, key) for key in wanted}
                except LeaderlessError:
                    continue                       # counted as divergent ("unknown") this round
            verdict = check_convergence(inspections, primaries)
        except LeaderlessError as exc:
            verdict = {"converged": False, "error": str(exc)}
        waited = time.monotonic() - started
        if verdict["converged"] or waited >= timeout:
            return {**verdict, "waited_s": round(waited, 2), "polls": polls}
        if progress is not None and time.monotonic() >= next_report:
            next_report += 1.0
            differ = verdict.get("divergent_keys") or {}
            progress(f"{waited:7.1f}s  still differing: " + ("; ".join(
                f"{key} on {', '.join(f'{node}={_short(state)}' for node, state in states.items())}"
                for key, states in differ.items()) or verdict.get("error", "?")))
        time.sleep(poll)


def _short(state: Any) -> str:
    if isinstance(state, dict):
        return f"{state['values']}v/{state['digest'][:4]}" + ("/tomb" if state["tombstone"] else "")
    return str(state)


# --- presenting a verdict --------------------------------------------------------------------

def passed(result: Mapping[str, Any]) -> bool:
    """A run passes when the checker found it valid and every replica converged."""
    return bool(result.get("valid")) and bool(result.get("converged"))


def summary_line(result: Mapping[str, Any]) -> str:
    """One line per run (the matrix prints these)."""
    verdict = "PASS" if passed(result) else "FAIL"
    conv = f"{result['convergence_s']:.1f}s" if result.get("convergence_s") is not None else "never"
    errors = f"  errors {len(result['errors'])}" if result.get("errors") else ""
    unread = (result.get("checker") or {}).get("unread_keys")
    errors += f"  unread keys {len(unread)}" if unread else ""
    by_fault = result.get("stale_reads_by_fault") or {}
    where = f" ({', '.join(f'{k} {v}' for k, v in by_fault.items())})" if by_fault else ""
    workload = result["workload"] + (f"/{result['mode']}" if result.get("mode", "siblings") != "siblings" else "")
    return (f"{verdict}  seed {result['seed']:>3}  {workload}  valid={result['valid']}  "
            f"converged={result['converged']} ({conv})  acknowledged {result['acknowledged']}  "
            f"lost {result['lost']}  unexpected {result['unexpected']}  recovered {result['recovered']}  "
            f"stale reads {result['stale_reads']}{where}  faults {len(result['faults'])}  "
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
    rows = [
        ("valid", flag(result["valid"], str(result["valid"]))),
        ("acknowledged", str(result["acknowledged"])),
        ("lost", flag(result["lost"] == 0, f"{result['lost']} ({result.get('lost_fraction', 0):.2%})")),
        ("unexpected", flag(result["unexpected"] == 0, str(result["unexpected"]))),
        ("recovered (indeterminate, present)", str(result["recovered"])),
        ("indeterminate", str(result.get("indeterminate", ""))),
        ("converged", flag(result["converged"], str(result["converged"]))),
        ("convergence after heal", f"{conv:.2f} s" if conv is not None else "[red]never[/red]"),
        ("stale reads", f"{result['stale_reads']} of {result['checker'].get('reads', '?')}"),
        ("stale reads by fault", ", ".join(f"{k} {v}" for k, v in result.get("stale_reads_by_fault", {}).items())
         or "-"),
        ("faults injected", str(len(result["faults"]))),
        ("workload (mode) / nemesis",
         f"{result['workload']} ({result.get('mode', 'siblings')}) / {','.join(result['nemesis'])}"),
        ("nodes, n/r/w", f"{result['nodes']}, {result['n']}/{result['r']}/{result['w']}"),
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


def matrix(seeds: Iterable[int], *, nodes: int = 5, nemesis: str | Iterable[str] = "all", workload: str = "set",
           time_s: float = 60.0, out: Callable[[str], None] = print, save: str | Path | None = None,
           **options: Any) -> list[dict[str, Any]]:
    """One run per seed; prints a line per run and a final summary; returns the results.

    ``save``: a directory that receives each run's whole verdict as ``seed-N.json``.
    """
    results: list[dict[str, Any]] = []
    for seed in seeds:
        try:
            result = run_chaos(nodes=nodes, nemesis=nemesis, workload=workload, time_s=time_s, seed=seed, **options)
        except LeaderlessError as exc:
            out(f"FAIL  seed {seed:>3}  could not run: {type(exc).__name__}: {exc}")
            results.append({"seed": seed, "valid": False, "converged": False, "error": str(exc)})
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
    ran = [r for r in results if "acknowledged" in r]
    times = [r["convergence_s"] for r in ran if r.get("convergence_s") is not None]
    out(f"{len(results)} runs: {sum(passed(r) for r in results)} passed, "
        f"{sum(bool(r.get('valid')) for r in results)} valid, {sum(bool(r.get('converged')) for r in results)} "
        f"converged (slowest {max(times, default=0):.1f} s after heal); "
        f"acknowledged {sum(r['acknowledged'] for r in ran)}, lost {sum(r['lost'] for r in ran)}, "
        f"unexpected {sum(r['unexpected'] for r in ran)}, recovered {sum(r['recovered'] for r in ran)}, "
        f"stale reads {sum(r['stale_reads'] for r in ran)}")
    return results


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
    parser.add_argument("--workload", default="set", help=f"one of {', '.join(WORKLOADS)}")
    parser.add_argument("--mode", default="siblings", help=f"bucket type of set/register: {', '.join(MODES)}")
    parser.add_argument("--verbose", action="store_true", help="print every fault as it happens (stderr)")
    parser.add_argument("--save", default=None, help="matrix: a directory for each run's whole verdict (JSON)")
    args = parser.parse_args(argv)
    nemesis = args.nemesis or ("all" if args.matrix else "partition,kill,slow")
    try:
        check_options(args.nodes, nemesis, args.workload, args.time, mode=args.mode)
    except OptionError as exc:
        parser.error(str(exc))
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.verbose else None
    if args.matrix:
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        results = matrix(seeds, nodes=args.nodes, nemesis=nemesis, workload=args.workload, time_s=args.time,
                         out=lambda line: print(line, flush=True), progress=progress, mode=args.mode,
                         save=args.save)
        return 0 if all(passed(r) for r in results) else 1
    result = run_chaos(nodes=args.nodes, nemesis=nemesis, workload=args.workload, time_s=args.time, seed=args.seed,
                       progress=progress, mode=args.mode)
    print(json.dumps(result, default=str))
    return 0 if passed(result) else 1


__all__ = ["FAST_REPAIR", "OptionError", "await_convergence", "check_options", "default_interval", "matrix",
           "parse_nemesis", "passed", "primaries_of", "run_chaos", "stale_by_fault", "summary_line", "verdict_table"]


if __name__ == "__main__":
    sys.exit(main())
