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
import threading
import time
from collections import Counter
from collections.abc import Callable
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


class _Window:
    """What one worker measures: completions per second, and latency and errors inside the window."""

    def __init__(self, ops: tuple[str, ...], t_go: float, t_measure: float, t_end: float, seconds: int) -> None:
        self.t_go, self.t_measure, self.t_end = t_go, t_measure, t_end
        self.hists = {op: LatencyHistogram() for op in ops}
        self.samples_us: dict[str, Counter[int]] = {op: Counter() for op in ops}   # folded into hists at the end
        self.ops: Counter[str] = Counter()
        self.per_second = [0] * seconds
        self.errors: Counter[str] = Counter()
        self.other_errors = 0                      # during warm-up or the drain
        self.error_samples: list[str] = []
        self.completed = self.failed = 0

    def record(self, op: str, start: float, done_at: float, error: BaseException | None) -> None:
        in_window = self.t_measure <= done_at <= self.t_end
        if error is None:
            self.completed += 1
            second = int(done_at - self.t_go)
            if 0 <= second < len(self.per_second):
                self.per_second[second] += 1
            if in_window:
                self.samples_us[op][hdr_floor(int((done_at - start) * 1e6))] += 1
                self.ops[op] += 1
        else:
            self.failed += 1
            if in_window:
                self.errors[f"{op}:{type(error).__name__}"] += 1
                if len(self.error_samples) < ERROR_SAMPLES:
                    self.error_samples.append(f"{op}: {type(error).__name__}: {error}"[:200])
            else:
                self.other_errors += 1


def run_load(driver: Any, spec: dict[str, Any], conn: Connection | None, start_wall: float, warmup_s: float,
             duration_s: float) -> dict[str, Any]:
    """The closed loop: ``inflight`` requests outstanding from ``start_wall`` for warm-up plus duration."""
    rng = random.Random(spec["seed"] * 7919 + spec["index"])
    mix = WORKLOADS[spec["workload"]]
    choose_op = mix.choose
    choose_key = key_chooser(spec["distribution"], spec["keys"], rng)
    value = rng.randbytes(spec["value_size"])
    name_of = key_names(spec["keys"])
    clock = time.perf_counter

    t_go = clock() + (start_wall - time.time())
    window = _Window(mix.ops, t_go, t_go + warmup_s, t_go + warmup_s + duration_s,
                     math.ceil(warmup_s + duration_s) + 1)

    def next_request() -> tuple[str, str, float]:
        op = choose_op(rng)
        return op, name_of(choose_key()), clock()

    while clock() < t_go:
        time.sleep(min(0.01, max(0.0, t_go - clock())))
    loop = _CallbackLoop if hasattr(driver, "submit_then") else _WaitLoop
    cpu, unfinished, stopped = loop(driver, spec["inflight"], value, next_request, window, conn).run()
    wall = max(cpu[1][1] - cpu[0][1], 1e-9)
    busy_s = cpu[1][0] - cpu[0][0]
    return {
        "index": spec["index"],
        "ops": dict(window.ops),
        "histograms": {op: _fold(window.hists[op], window.samples_us[op]).encode() for op in window.hists},
        "per_second": window.per_second,
        "errors": dict(window.errors),
        "error_samples": window.error_samples,
        "errors_outside_window": window.other_errors,
        "unfinished": unfinished,
        "window_s": wall,
        "cpu": {"busy": round(busy_s / wall, 3), "cpu_s": round(busy_s, 3)},
        "latency_source": getattr(driver, "latency_source", "reply stamp"),
        "stopped_early": stopped,
    }


CpuStamp = tuple[float, float]          # (process CPU seconds, perf_counter)


class _Loop:
    def __init__(self, driver: Any, inflight: int, value: bytes, next_request: Callable[[], tuple[str, str, float]],
                 window: _Window, conn: Connection | None) -> None:
        self.driver, self.inflight, self.value = driver, inflight, value
        self.next_request, self.window, self.conn = next_request, window, conn
        self.stopped = False
        self.next_tick = window.t_go + TICK_S
        self.cpu_start: CpuStamp | None = None
        self.cpu_end: CpuStamp | None = None

    def _stamp(self, now: float) -> None:
        """Take the process's CPU time as the window opens and as it closes."""
        if self.cpu_start is None and now >= self.window.t_measure:
            self.cpu_start = (time.process_time(), now)
        if self.cpu_end is None and now >= self.window.t_end:
            self.cpu_end = (time.process_time(), now)

    def _tick(self, now: float) -> None:
        """Tell the parent how far we are, about twice a second; it may say stop."""
        if self.conn is not None and now >= self.next_tick:
            self.next_tick = now + TICK_S
            self.conn.send(("tick", self.window.completed, self.window.failed))
            if self.conn.poll() and self.conn.recv()[0] in ("stop", "exit"):
                self.stopped = True

    def _cpu(self) -> tuple[CpuStamp, CpuStamp]:
        now = time.perf_counter()
        return self.cpu_start or (time.process_time(), now), self.cpu_end or (time.process_time(), now)


class _WaitLoop(_Loop):
    """The worker thread sends, then waits for completions (``driver.wait``)."""

    def run(self) -> tuple[tuple[CpuStamp, CpuStamp], int, bool]:
        submit, wait, record, window = self.driver.submit, self.driver.wait, self.window.record, self.window
        pending: dict[int, tuple[str, float]] = {}
        while True:
            now = time.perf_counter()
            self._stamp(now)
            if now < window.t_end and not self.stopped:
                while len(pending) < self.inflight:
                    op, key, start = self.next_request()
                    pending[id(submit(op, key, self.value))] = (op, start)
            elif not pending or now > window.t_end + DRAIN_S:
                break
            for handle, done_at, error in wait(WAIT_S):
                entry = pending.pop(id(handle), None)
                if entry is not None:
                    record(entry[0], entry[1], done_at, error)
            self._tick(now)
        return self._cpu(), len(pending), self.stopped


class _CallbackLoop(_Loop):
    """Each completion, on the client's I/O thread, is recorded and replaced by the next request
    (``driver.submit_then``); this thread only keeps time, reports and stops. No reply crosses
    between threads: handing each frame's replies to a waiting worker thread cost about a tenth of
    a write's client CPU and a fifth of a read's."""

    def run(self) -> tuple[tuple[CpuStamp, CpuStamp], int, bool]:
        window = self.window
        self._lock = threading.RLock()        # the first requests go from this thread, the rest from the I/O thread
        self._outstanding = 0
        self._closing = False                 # no more requests
        self._finished = False                # nothing more recorded: the result is being read
        self._failure: BaseException | None = None
        with self._lock:
            for _ in range(self.inflight):
                self._send()
        while True:
            now = time.perf_counter()
            self._stamp(now)
            if self._failure is not None:
                raise self._failure
            if now >= window.t_end or self.stopped:
                self._closing = True
                if not self._outstanding or now > window.t_end + DRAIN_S:
                    break
            self._tick(now)
            wake = [self.next_tick, window.t_end + DRAIN_S]
            wake += [t for t, stamped in ((window.t_measure, self.cpu_start), (window.t_end, self.cpu_end))
                     if stamped is None]
            time.sleep(max(0.0, min(min(wake) - time.perf_counter(), WAIT_S)))
        with self._lock:
            self._closing = self._finished = True
            return self._cpu(), self._outstanding, self.stopped

    def _send(self) -> None:
        op, key, start = self.next_request()
        self._outstanding += 1
        try:
            self.driver.submit_then(op, key, self.value, lambda done_at, error: self._done(op, start, done_at, error))
        except Exception as exc:               # noqa: BLE001 - no node reachable: the worker fails, as with submit
            self._outstanding -= 1
            self._failure = exc
            self._closing = True

    def _done(self, op: str, start: float, done_at: float, error: BaseException | None) -> None:
        with self._lock:
            if self._finished:
                return
            self._outstanding -= 1
            self.window.record(op, start, done_at, error)
            if not self._closing and done_at < self.window.t_end:
                self._send()
