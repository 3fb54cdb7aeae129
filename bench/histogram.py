"""Latency histograms: HDR (the ``hdrhistogram`` package) or, without it, log buckets of our own.

    hist = LatencyHistogram()
    hist.record(1234)                      # microseconds
    blob = hist.encode()                   # a str, small: what a worker sends to the parent
    total = LatencyHistogram.decode(blob); total.merge(LatencyHistogram.decode(other))
    total.percentile(99.9)                 # microseconds (the highest value of that bucket)

Both backends keep counts per bucket, never the samples, so memory and the cost of a
percentile do not grow with the run. Values are whole microseconds from 1 µs to 60 s
(smaller ones count as 1 µs, larger ones as 60 s) with 3 significant digits (HDR) or
under 0.8% relative error (log buckets).
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable
from typing import Any

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_FIGURES = 3
SUB_BUCKET_BITS = 7                 # log buckets: 128 per power of two, so under 1/128 relative error
_SUB = 1 << SUB_BUCKET_BITS

try:
    from hdrh.histogram import HdrHistogram
except ImportError:             # the fallback below serves; `pip install leaderless[bench]` brings hdrhistogram
    HdrHistogram = None


def hdr_available() -> bool:
    return HdrHistogram is not None


def _clamp(micros: float) -> int:
    value = int(micros)
    if value < LOWEST_US:
        return LOWEST_US
    if value > HIGHEST_US:
        return HIGHEST_US
    return value


class LogBuckets:
    """Counts per log-linear bucket: exact below 128 µs, then 128 buckets per power of two."""

    kind = "log"

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.max_value = 0

    @staticmethod
    def index(value: int) -> int:
        if value < 2 * _SUB:
            return value
        shift = value.bit_length() - SUB_BUCKET_BITS - 1
        return _SUB * (shift + 1) + (value >> shift) - _SUB

    @staticmethod
    def highest(index: int) -> int:
        """The largest value that falls in bucket ``index``."""
        if index < 2 * _SUB:
            return index
        shift = index // _SUB - 1
        mantissa = index % _SUB + _SUB
        return ((mantissa + 1) << shift) - 1

    def record(self, value: int, count: int = 1) -> None:
        i = self.index(value)
        self.counts[i] = self.counts.get(i, 0) + count
        self.total += count
        self.max_value = max(self.max_value, value)

    def merge(self, other: LogBuckets) -> None:
        for i, c in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + c
        self.total += other.total
        self.max_value = max(self.max_value, other.max_value)

    def percentiles(self, wanted: Iterable[float]) -> dict[float, int]:
        targets = sorted(set(wanted))
        out: dict[float, int] = {}
        if not self.total:
            return {p: 0 for p in targets}
        running = 0
        pending = list(targets)
        for i in sorted(self.counts):
            running += self.counts[i]
            while pending and running >= max(1, int(pending[0] * self.total / 100 + 0.5)):
                out[pending.pop(0)] = min(self.highest(i), self.max_value)
            if not pending:
                break
        for p in pending:
            out[p] = self.max_value
        return out

    def mean(self) -> float:
        if not self.total:
            return 0.0
        return sum(self.highest(i) * c for i, c in self.counts.items()) / self.total

    def encode(self) -> str:
        body = json.dumps({"c": sorted(self.counts.items()), "m": self.max_value}).encode()
        return base64.b64encode(zlib.compress(body)).decode("ascii")

    @classmethod
    def decode(cls, text: str) -> LogBuckets:
        body = json.loads(zlib.decompress(base64.b64decode(text)))
        hist = cls()
        for i, c in body["c"]:
            hist.counts[int(i)] = int(c)
            hist.total += int(c)
        hist.max_value = int(body["m"])
        return hist


class LatencyHistogram:
    """A latency histogram in microseconds; HDR when ``hdrhistogram`` is installed (or ``backend="hdr"``)."""

    def __init__(self, backend: str | None = None) -> None:
        if backend is None:
            backend = "hdr" if hdr_available() else "log"
        if backend == "hdr" and not hdr_available():
            raise RuntimeError("hdrhistogram is not installed (pip install leaderless[bench])")
        if backend not in ("hdr", "log"):
            raise ValueError(f"unknown histogram backend {backend!r}")
        self.backend = backend
        self._h: Any
        # bound once: record() is called for every operation a worker completes
        if backend == "hdr":
            self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
            self._record = self._h.record_value
        else:
            self._h = LogBuckets()
            self._record = self._h.record

    def record(self, micros: float, count: int = 1) -> None:
        self._record(_clamp(micros), count)

    @property
    def count(self) -> int:
        return self._h.get_total_count() if self.backend == "hdr" else self._h.total

    @property
    def max(self) -> int:
        return self._h.get_max_value() if self.backend == "hdr" else self._h.max_value

    def mean(self) -> float:
        return float(self._h.get_mean_value()) if self.backend == "hdr" else self._h.mean()

    def percentile(self, p: float) -> int:
        return self.percentiles([p])[p]

    def percentiles(self, wanted: Iterable[float]) -> dict[float, int]:
        wanted = list(wanted)
        if self.count == 0:
            return {p: 0 for p in wanted}
        if self.backend == "hdr":
            return {p: int(v) for p, v in self._h.get_percentile_to_value_dict(wanted).items()}
        return self._h.percentiles(wanted)

    def merge(self, other: LatencyHistogram) -> None:
        if other.backend != self.backend:
            raise ValueError(f"cannot merge a {other.backend} histogram into a {self.backend} one")
        if other.count:
            self._h.add(other._h) if self.backend == "hdr" else self._h.merge(other._h)

    def encode(self) -> str:
        """A compact text form (tagged with the backend) for sending between processes."""
        body = self._h.encode().decode("ascii") if self.backend == "hdr" else self._h.encode()
        return f"{self.backend}:{body}"

    @classmethod
    def decode(cls, text: str) -> LatencyHistogram:
        backend, _, body = text.partition(":")
        hist = cls.__new__(cls)
        hist.backend = backend
        if backend == "hdr":
            if not hdr_available():
                raise RuntimeError("an HDR histogram arrived but hdrhistogram is not installed here")
            hist._h = HdrHistogram.decode(body.encode("ascii"))
            hist._record = hist._h.record_value
        elif backend == "log":
            hist._h = LogBuckets.decode(body)
            hist._record = hist._h.record
        else:
            raise ValueError(f"unknown histogram encoding {backend!r}")
        return hist


def summary_ms(hist: LatencyHistogram) -> dict[str, float]:
    """p50/p95/p99/p999 (and mean, max) in milliseconds, as the JSON report gives them."""
    p = hist.percentiles([50.0, 95.0, 99.0, 99.9])
    return {"p50": p[50.0] / 1000, "p95": p[95.0] / 1000, "p99": p[99.0] / 1000, "p999": p[99.9] / 1000,
            "mean": round(hist.mean() / 1000, 3), "max": hist.max / 1000, "count": hist.count}
