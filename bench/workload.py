"""YCSB-style workloads: the operation mix, and which key each operation touches.

    mix = WORKLOADS["b"]                      # 95% read, 5% update
    keys = key_chooser("zipfian", 10_000, random.Random(7))
    op = mix.choose(rng); key = key_name(keys())

Workloads A (50% read / 50% update), B (95/5), C (read only) and W (write only) as in
YCSB (W is ours: YCSB has no pure-write workload), and CAS: serial writes only (linearizable
puts, a Paxos round each; compare with W for what they cost). Key choice is uniform, or Zipfian
with YCSB's constant 0.99 by the method of Gray et al., "Quickly generating
billion-record synthetic databases" (SIGMOD 1994): rank 0 is the most popular key.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

ZIPFIAN_CONSTANT = 0.99


@dataclass(frozen=True)
class Workload:
    name: str
    read_fraction: float
    description: str
    load_first: bool        # write every key before the run, so reads find values
    write_op: str = "write"  # "cas": a serial (Paxos) put, ``put(..., serial=True)``

    def choose(self, rng: random.Random) -> str:
        """``"read"`` or the write operation, in this workload's proportions."""
        if self.read_fraction >= 1.0:
            return "read"
        if self.read_fraction <= 0.0:
            return self.write_op
        return "read" if rng.random() < self.read_fraction else self.write_op

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(op for op, share in (("read", self.read_fraction), (self.write_op, 1 - self.read_fraction))
                     if share > 0)


WORKLOADS: dict[str, Workload] = {
    "a": Workload("a", 0.5, "50% read, 50% update", True),
    "b": Workload("b", 0.95, "95% read, 5% update", True),
    "c": Workload("c", 1.0, "read only", True),
    "w": Workload("w", 0.0, "write only", False),
    "cas": Workload("cas", 0.0, "serial writes only (a Paxos round each: put(..., serial=True))", False, "cas"),
}

DISTRIBUTIONS = ("uniform", "zipfian")


def key_name(rank: int) -> str:
    return f"user{rank:08d}"


def key_names(keys: int) -> Callable[[int], str]:
    """``key_name`` for ranks below ``keys``: a list lookup when the names fit in memory (formatting
    a key was a twentieth of a benchmark client's CPU)."""
    if keys > 1_000_000:
        return key_name
    return [key_name(rank) for rank in range(keys)].__getitem__


class Zipfian:
    """Ranks 0..n-1 drawn with P(rank k) proportional to 1 / (k + 1) ** theta."""

    def __init__(self, n: int, rng: random.Random, theta: float = ZIPFIAN_CONSTANT) -> None:
        if n < 1:
            raise ValueError("a Zipfian distribution needs at least one item")
        if not 0 < theta < 1:
            raise ValueError("theta must lie strictly between 0 and 1")
        self.n = n
        self.theta = theta
        self._random = rng.random
        self.zeta_n = sum(1.0 / (i ** theta) for i in range(1, n + 1))
        zeta_2 = 1.0 + 0.5 ** theta
        self._alpha = 1.0 / (1.0 - theta)
        self._eta = (1.0 - (2.0 / n) ** (1.0 - theta)) / (1.0 - zeta_2 / self.zeta_n) if n > 2 else 0.0
        self._half_pow_theta = 1.0 + 0.5 ** theta

    def __call__(self) -> int:
        u = self._random()
        uz = u * self.zeta_n
        if uz < 1.0 or self.n == 1:
            return 0
        if uz < self._half_pow_theta or self.n == 2:
            return 1
        rank = int(self.n * (self._eta * u - self._eta + 1.0) ** self._alpha)
        return min(rank, self.n - 1)


def key_chooser(distribution: str, keys: int, rng: random.Random) -> Callable[[], int]:
    """A function returning the next key's rank in ``0..keys-1``."""
    if distribution == "uniform":
        return lambda: rng.randrange(keys)
    if distribution == "zipfian":
        return Zipfian(keys, rng)
    raise ValueError(f"unknown key distribution {distribution!r} (one of {', '.join(DISTRIBUTIONS)})")
