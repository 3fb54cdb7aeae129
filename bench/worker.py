"""One client process of a benchmark: load its share of the keys, then keep requests in flight.

Started by ``bench.runner`` with the ``spawn`` start method; it talks to the parent over
a pipe:

    worker -> parent   ("ready", info)   connected (and, for A/B/C, its keys written)
    parent -> worker   ("go", start_wall_time, warmup_s, duration_s)
    worker -> parent   ("tick", completed, errors)      about twice a second
    worker -> parent   ("done", result)  encoded histograms, ops per second, errors, CPU
    parent -> worker   ("stop",)         end the run early;   ("exit",) close and leave

The worker keeps ``inflight`` requests outstanding (closed loop): every completion is
recorded and replaced by a new request at once. Only operations that complete inside the
measured window (after the warm-up) go into the histograms; ``per_second`` covers the
warm-up too. ``cpu.busy`` is this process's CPU time (all its threads) over the window's
wall time: near 1.0 means the client, not the store, set the pace.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

from .drivers import make_driver
from .histogram import LatencyHistogram
from .workload import WORKLOADS, key_chooser, key_name, key_names

log = logging.getLogger(__name__)

TICK_S = 0.5
WAIT_S = 0.05              # longest a loop turn waits for a completion
DRAIN_S = 10.0             # after the window, how long outstanding requests may take to finish
ERROR_SAMPLES = 3


def hdr_floor(micros: int) -> int:
    """``micros`` rounded down to what an HDR histogram of 3 significant figures keeps apart (2,048
    sub-buckets: exact below 2,048 µs, then 11 significant bits). Counting these in a dict during the
    run and recording each distinct one once at the end gives the same histogram for a fraction of
    the client CPU (recording into ``HdrHistogram`` costs a few µs a value, a tenth of a worker's CPU)."""
    shift = micros.bit_length() - 11
    return micros if shift <= 0 else (micros >> shift) << shift


def _fold(hist: LatencyHistogram, counts: Counter[int]) -> LatencyHistogram:
    for micros, count in counts.items():
        hist.record(micros, count)
    counts.clear()
    return hist


def worker_main(spec: dict[str, Any], conn: Connection) -> None:
    """Process entry point (must stay importable: the spawn start method imports it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # the parent decides when workers stop
    logging.basicConfig(level=logging.WARNING, format=f"worker {spec['index']}: %(levelname)s %(message)s")
    driver = None
    try:
        driver = make_driver(spec["target"])
        info = load_keys(driver, spec) if spec.get("load") else {"loaded": 0, "load_s": 0.0, "load_errors": 0}
        conn.send(("ready", info))
        message = _receive(conn, float(spec.get("go_timeout", 600.0)))
        if message and message[0] == "go":
            _, start_wall, warmup_s, duration_s = message
            result = run_load(driver, spec, conn, start_wall, warmup_s, duration_s)
            conn.send(("done", result))
            _receive(conn, 120.0, want=("exit",))
    except BaseException as exc:            # noqa: BLE001 - reported to the parent, which fails the run
        try:
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        except (OSError, ValueError):
            pass
    finally:
        if driver is not None:
            try:
                driver.close()
            except Exception:               # noqa: BLE001 - the process is leaving anyway
                pass
        conn.close()


def _receive(conn: Connection, timeout: float, want: tuple[str, ...] = ("go", "stop", "exit")) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
            message = conn.recv()
            if message[0] in want or message[0] in ("stop", "exit"):
                return message
    return None


def load_keys(driver: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Write this worker's share of the keys (every ``workers``-th one), ``inflight`` at a time."""
    keys = range(spec["index"], spec["keys"], spec["workers"])
    value = random.Random(spec["seed"]).randbytes(spec["value_size"])
    inflight = spec["inflight"]
    deadline = time.perf_counter() + float(spec.get("load_timeout", 300.0))
    pending: dict[int, Any] = {}
    errors: Counter[str] = Counter()
    started = time.perf_counter()
    it = iter(keys)
    exhausted = False
    while True:
        while not exhausted and len(pending) < inflight:
            rank = next(it, None)
            if rank is None:
                exhausted = True
                break
            handle = driver.submit("write", key_name(rank), value)
            pending[id(handle)] = handle
        if exhausted and not pending:
            break
        if time.perf_counter() > deadline:
            raise RuntimeError(f"loading {len(keys)} keys took longer than {spec.get('load_timeout', 300.0)}s")
        for handle, _done_at, error in driver.wait(WAIT_S):
            if pending.pop(id(handle), None) is not None and error is not None:
                errors[type(error).__name__] += 1
    return {"loaded": len(keys), "load_s": time.perf_counter() - started, "load_errors": sum(errors.values()),
            "load_error_kinds": dict(errors)}


def run_load(driver: Any, spec: dict[str, Any], conn: Connection | None, start_wall: float, warmup_s: float,
             duration_s: float) -> dict[str, Any]:
    """The closed loop: ``inflight`` requests outstanding from ``start_wall`` for warm-up plus duration."""
    rng = random.Random(spec["seed"] * 7919 + spec["index"])
    mix = WORKLOADS[spec["workload"]]
    choose_op = mix.choose
    choose_key = key_chooser(spec["distribution"], spec["keys"], rng)
    value = rng.randbytes(spec["value_size"])
    inflight = spec["inflight"]
    submit, wait = driver.submit, driver.wait
    clock = time.perf_counter
    name_of = key_names(spec["keys"])

    t_go = clock() + (start_wall - time.time())
    t_measure = t_go + warmup_s
    t_end = t_measure + duration_s
    hists = {op: LatencyHistogram() for op in mix.ops}
    samples_us: dict[str, Counter[int]] = {op: Counter() for op in mix.ops}   # folded into hists at the end
    ops: Counter[str] = Counter()
    per_second = [0] * (math.ceil(warmup_s + duration_s) + 1)
    errors: Counter[str] = Counter()
    other_errors = 0                          # during warm-up or the drain
    samples: list[str] = []
    pending: dict[int, tuple[Any, str, float]] = {}
    completed = failed = 0
    cpu_start: tuple[float, float] | None = None
    cpu_end: tuple[float, float] | None = None
    stopped = False

    while clock() < t_go:
        time.sleep(min(0.01, max(0.0, t_go - clock())))
    next_tick = t_go + TICK_S
    while True:
        now = clock()
        if cpu_start is None and now >= t_measure:
            cpu_start = (time.process_time(), now)
        if cpu_end is None and now >= t_end:
            cpu_end = (time.process_time(), now)
        if now < t_end and not stopped:
            while len(pending) < inflight:
                op = choose_op(rng)
                key = name_of(choose_key())
                start = clock()
                handle = submit(op, key, value)
                pending[id(handle)] = (handle, op, start)
        elif not pending or now > t_end + DRAIN_S:
            break
        for handle, done_at, error in wait(WAIT_S):
            entry = pending.pop(id(handle), None)
            if entry is None:
                continue
            _, op, start = entry
            in_window = t_measure <= done_at <= t_end
            if error is None:
                completed += 1
                second = int(done_at - t_go)
                if 0 <= second < len(per_second):
                    per_second[second] += 1
                if in_window:
                    samples_us[op][hdr_floor(int((done_at - start) * 1e6))] += 1
                    ops[op] += 1
            else:
                failed += 1
                if in_window:
                    errors[f"{op}:{type(error).__name__}"] += 1
                    if len(samples) < ERROR_SAMPLES:
                        samples.append(f"{op}: {type(error).__name__}: {error}"[:200])
                else:
                    other_errors += 1
        if conn is not None and now >= next_tick:
            next_tick = now + TICK_S
            conn.send(("tick", completed, failed))
            if conn.poll() and conn.recv()[0] in ("stop", "exit"):
                stopped = True
    now = clock()
    cpu_start = cpu_start or (time.process_time(), now)
    cpu_end = cpu_end or (time.process_time(), now)
    wall = max(cpu_end[1] - cpu_start[1], 1e-9)
    return {
        "index": spec["index"],
        "ops": dict(ops),
        "histograms": {op: _fold(hists[op], samples_us[op]).encode() for op in hists},
        "per_second": per_second,
        "errors": dict(errors),
        "error_samples": samples,
        "errors_outside_window": other_errors,
        "unfinished": len(pending),
        "window_s": wall,
        "cpu": {"busy": round((cpu_end[0] - cpu_start[0]) / wall, 3), "cpu_s": round(cpu_end[0] - cpu_start[0], 3)},
        "latency_source": getattr(driver, "latency_source", "reply stamp"),
        "stopped_early": stopped,
    }
