"""Workloads: client threads that drive a cluster during a chaos run and record every op.

    workload = make_workload("set", cluster, history, seed=7)
    workload.start()
    ...                                   # the nemesis breaks things meanwhile
    workload.stop()
    finals = workload.final_reads(cluster.client())
    verdict = workload.check(finals)

- ``set``: several threads add unique elements (``"p3-17"``) to a few keys in siblings
  mode: read, union the elements of every sibling, add one, write back with the read's
  context. A failed attempt is retried (a bounded number of times) from a fresh read.
- ``register``: one writer thread per single-writer key writes increasing integers;
  several writers share each multi-writer key; every write reads first and writes with
  that read's context; reader threads read random keys (for stale-read counting).
- ``counter``: threads increment and decrement a few keys of a ``counter`` bucket (CRDT
  operations, retried by the client with one operation id); readers read them.
- ``orset``, ``map``, ``delete``: removes and deletes (``actors.removal_workloads``).

``mode`` picks the bucket type the ``set``, ``register`` and ``delete`` workloads write to:
``siblings`` (dotted version vectors) or ``lww`` (last write wins by hybrid clock, lossy by
design: the checker then measures how much it loses).

``n``, ``r``, ``w``: the workload's bucket. With ``n`` given, every workload writes to a
bucket of its own created with that n (and ``r``/``w``, capped at n); without, ``set`` and
``register`` use the default bucket (the cluster's n, r, w) and the others a bucket with
the cluster's n. ``replicas()`` names each key as replicas store it, with its n (what
the convergence and copy-count checks need).

Each thread has its own ``Client`` bound to two nodes (spread round the cluster), so a
fault near "its" nodes shows up as failed or indeterminate ops; after a membership change
(``members_changed``) each thread binds its client to two of the new members. Every loop is
bounded in op count and, through ``stop()``, in time.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from .checker import check_counter, check_register, check_set
from .client import Client
from .errors import InvalidRequest, LeaderlessError
from .history import History, outcome_of
from .messages import BucketProps

log = logging.getLogger(__name__)

WORKLOADS = ("set", "orset", "map", "register", "counter", "delete", "cas-register", "unique")
MODES = ("siblings", "lww")
LWW_WORKLOADS = ("set", "register", "delete")
"""The workloads that write whole values, so that ``--mode lww`` applies to them."""
SEPARATOR = "\x00"
_SPLIT = re.compile(r"[,\n]")


def parse_set(values: Iterable[bytes]) -> set[str]:
    """The union of the elements of every sibling (each a comma- or newline-separated set)."""
    out: set[str] = set()
    for value in values:
        out.update(part for part in _SPLIT.split(bytes(value).decode("utf-8", "backslashreplace")) if part)
    return out


def encode_set(elements: Iterable[str]) -> bytes:
    return ",".join(sorted(elements)).encode()


def parse_register(values: Iterable[bytes]) -> list[Any]:
    """Register values: integers (anything else is kept as text, and will count as unexpected)."""
    out: list[Any] = []
    for value in values:
        text = bytes(value).decode("utf-8", "backslashreplace")
        out.append(int(text) if text.lstrip("-").isdigit() else text)
    return sorted(out, key=lambda v: (isinstance(v, str), v))


class Workload:
    """Client threads against a cluster; subclasses say what one thread does."""

    name = ""

    bucket = ""
    """The bucket written to (``""``: the default bucket); set in ``__init__``."""
    bucket_type = "siblings"
    own_bucket = False
    """Whether the workload always uses a bucket of its own (CRDT types), not the default bucket."""

    def __init__(self, cluster: Any, history: History, *, seed: int = 0, client_timeout: float = 1.0,
                 pause_s: float = 0.005, max_ops: int = 100_000, mode: str = "siblings", n: int | None = None,
                 r: int | str | None = None, w: int | str | None = None) -> None:
        if mode not in MODES:
            raise InvalidRequest(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if mode != "siblings" and self.name not in LWW_WORKLOADS:
            raise InvalidRequest(f"the {self.name} workload uses a {self.bucket_type} bucket; --mode {mode} applies "
                                 f"to {', '.join(LWW_WORKLOADS)}")
        if mode == "lww":
            self.bucket_type = "lww"
        if self.own_bucket or mode == "lww" or n is not None:
            self.bucket = f"chaos-{self.name}" + ("-lww" if mode == "lww" else "")
        if n is not None and not 1 <= n <= len(cluster.nodes):
            raise InvalidRequest(f"n={n} must be between 1 and the {len(cluster.nodes)} nodes")
        self.mode = mode
        self.cluster = cluster
        self.history = history
        self.seed = seed
        self.client_timeout = client_timeout
        self.pause_s = pause_s
        self.max_ops = max_ops
        self.n = n if n is not None else cluster.config.n
        self.r = _cap(r, self.n)
        self.w = _cap(w, self.n)
        self.props: BucketProps | None = None  # the bucket's properties once created
        self.keys: list[str] = []
        self.errors: list[str] = []           # unexpected exceptions in threads (bugs, not faults)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._clients: list[_Home] = []
        self._members = dict(cluster.addresses)  # name -> address; replaced on membership changes
        self._generation = 0

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self.bucket:
            with self.cluster.client() as admin:
                self.props = admin.create_bucket(self.bucket, type=self.bucket_type, n=self.n, r=self.r,
                                                 w=self.w).props
        for proc, target in enumerate(self._plan()):
            home = _Home(self, proc)
            self._clients.append(home)
            thread = threading.Thread(target=self._guard, args=(target, proc, home),
                                      name=f"{self.name}-p{proc}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Ask every thread to stop, wait for them (each finishes its current op), close clients."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout)
            if thread.is_alive():
                self.errors.append(f"thread {thread.name} did not stop within {timeout}s")
        for client in self._clients:
            client.close()
        self._clients.clear()

    def members_changed(self, addresses: Mapping[str, Any]) -> None:
        """The cluster's members changed (a node joined or left): threads rebind their clients."""
        self._members = dict(addresses)
        self._generation += 1

    def replicas(self) -> dict[str, int]:
        """Every key as replicas store it (``bucket\\0key``), with the n of its bucket."""
        return {self.storage_key(key): self.n for key in self.keys}

    def storage_key(self, key: str) -> str:
        return f"{self.bucket}{SEPARATOR}{key}" if self.bucket else key

    def describe_bucket(self) -> dict[str, Any]:
        """The bucket written to: name, type, n, r, w."""
        if self.props is not None:
            return {"name": self.props.name, "type": self.props.type, "n": self.props.n, "r": self.props.r,
                    "w": self.props.w}
        config = self.cluster.config
        return {"name": self.bucket, "type": self.bucket_type, "n": self.n, "r": self.r or config.r,
                "w": self.w or config.w}

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _guard(self, target: Any, proc: int, client: Any) -> None:
        try:
            target(proc, client, random.Random(f"{self.seed}/{proc}"))
        except Exception as exc:          # a bug in the workload or the client, not a fault
            log.exception("workload thread p%d failed", proc)
            self.errors.append(f"p{proc}: {type(exc).__name__}: {exc}")

    def _plan(self) -> list[Any]:
        """One target function per thread."""
        raise NotImplementedError

    def _wait(self, attempt: int = 0) -> bool:
        """Pause between ops (longer after failures); False when the workload is stopping."""
        return not self._stop.wait(self.pause_s + min(0.5, 0.05 * attempt))

    # --- client calls ----------------------------------------------------------------------

    def _get(self, client: Client, key: str) -> Any:
        return client.get_async(key, bucket=self.bucket).get(timeout=self.client_timeout + 1.0)

    def _put(self, client: Client, key: str, value: bytes, context: Any) -> Any:
        future = client.put_async(key, value, context=context, bucket=self.bucket)
        return future.get(timeout=self.client_timeout + 1.0)

    def _read(self, client: Client, proc: int, key: str, parse: Any) -> Any:
        """A recorded read: ``(parse(result), context)``, or ``None`` when it failed."""
        handle = self.history.invoke(proc, "read", key)
        try:
            result = self._get(client, key)
        except LeaderlessError as exc:
            self.history.complete(handle, outcome_of("read", exc), f"{type(exc).__name__}: {exc}")
            return None
        except BaseException as exc:
            self.history.complete(handle, "fail", f"{type(exc).__name__}: {exc}")
            raise
        values = parse(result)
        self.history.complete(handle, "ok", sorted(values, key=str) if isinstance(values, (set, list)) else values)
        return values, result.context

    # --- after the run ---------------------------------------------------------------------

    def final_reads(self, client: Client, r: int | str = "all", attempts: int = 5) -> dict[str, Any]:
        """Read every key at ``r`` (retried); a key whose read keeps failing maps to ``None``."""
        out: dict[str, Any] = {}
        for key in self.keys:
            out[key] = None
            for attempt in range(attempts):
                handle = self.history.invoke("final", "final-read", key)
                try:
                    result = client.get(key, r=r, timeout=5.0, bucket=self.bucket)
                except LeaderlessError as exc:
                    self.history.complete(handle, "fail", f"{type(exc).__name__}: {exc}")
                    self._stop.wait(0.5 * (attempt + 1))
                    continue
                out[key] = self._final_value(result)
                self.history.complete(handle, "ok", out[key])
                break
        return out

    def _final_value(self, result: Any) -> Any:
        raise NotImplementedError

    def check(self, final_reads: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class _Home:
    """A thread's client: bound to two members (spread round the cluster by thread number), and
    built again on the current members after a membership change. Calls go to that ``Client``."""

    def __init__(self, workload: Workload, proc: int) -> None:
        self.workload = workload
        self.proc = proc
        self._client: Client | None = None
        self._generation = -1
        self._lock = threading.Lock()

    def current(self) -> Client:
        workload = self.workload
        with self._lock:
            if self._client is None or self._generation != workload._generation:
                if self._client is not None:
                    self._client.close()
                self._generation = workload._generation
                members = dict(workload._members)
                nodes = sorted(members, key=lambda name: (len(name), name))
                home = [nodes[self.proc % len(nodes)], nodes[(self.proc + 1) % len(nodes)]]
                self._client = Client(members, workload.cluster.secret, nodes=list(dict.fromkeys(home)),
                                      timeout=workload.client_timeout, node_timeout=workload.cluster.config.timeout)
            return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current(), name)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _cap(quorum: int | str | None, n: int) -> int | str | None:
    """A quorum given as a number, capped at the bucket's n (names such as ``all`` resolve per bucket)."""
    if isinstance(quorum, str) and quorum.isdigit():
        quorum = int(quorum)
    return min(quorum, n) if isinstance(quorum, int) else quorum


class SetWorkload(Workload):
    """Unique elements added to a few keys by read, merge siblings, add, write back with the context."""

    name = "set"

    def __init__(self, cluster: Any, history: History, *, clients: int = 5, keys: int = 3, attempts: int = 4,
                 **kwargs: Any) -> None:
        super().__init__(cluster, history, **kwargs)
        self.clients = clients
        self.attempts = attempts
        self.keys = [f"set:{i}" for i in range(keys)]

    def _plan(self) -> list[Any]:
        return [self._adder] * self.clients

    def _adder(self, proc: int, client: Client, rng: random.Random) -> None:
        for seq in range(self.max_ops):
            if not self._wait():
                return
            self._add(proc, client, rng.choice(self.keys), f"p{proc}-{seq}")

    def _add(self, proc: int, client: Client, key: str, element: str) -> None:
        handle = self.history.invoke(proc, "add", key, element)
        indeterminate = False
        error: BaseException | None = None
        attempt = 0
        while attempt < self.attempts:
            if attempt and not self._wait(attempt):
                break
            attempt += 1
            read = self._read(client, proc, key, _set_of)
            if read is None:
                continue                       # nothing was written: this attempt certainly failed
            elements, context = read
            try:
                self._put(client, key, encode_set(elements | {element}), context)
            except InvalidRequest as exc:      # refused: retrying will not help
                error = exc
                break
            except LeaderlessError as exc:     # may have been applied
                indeterminate, error = True, exc
                continue
            except BaseException:
                self.history.complete(handle, "info", {"attempts": attempt, "error": "workload crashed"})
                raise
            self.history.complete(handle, "ok", {"attempts": attempt})
            return
        detail = {"attempts": attempt, "error": f"{type(error).__name__}: {error}" if error else "read failed"}
        self.history.complete(handle, "info" if indeterminate else "fail", detail)

    def _final_value(self, result: Any) -> list[str]:
        return sorted(parse_set(result.values))

    def check(self, final_reads: Mapping[str, Any]) -> dict[str, Any]:
        return check_set(self.history, final_reads)


class RegisterWorkload(Workload):
    """Single-writer keys (one thread each, increasing integers) and multi-writer keys, plus readers."""

    name = "register"

    def __init__(self, cluster: Any, history: History, *, single_keys: int = 3, multi_keys: int = 2,
                 writers_per_key: int = 2, readers: int = 2, **kwargs: Any) -> None:
        super().__init__(cluster, history, **kwargs)
        self.single = [f"reg:single:{i}" for i in range(single_keys)]
        self.multi = [f"reg:multi:{i}" for i in range(multi_keys)]
        self.writers_per_key = writers_per_key
        self.readers = readers
        self.keys = self.single + self.multi

    def _plan(self) -> list[Any]:
        plan: list[Any] = [self._writer(key) for key in self.single]
        plan += [self._writer(key) for key in self.multi for _ in range(self.writers_per_key)]
        plan += [self._reader] * self.readers
        return plan

    def _writer(self, key: str) -> Any:
        def write_loop(proc: int, client: Client, rng: random.Random) -> None:
            for seq in range(1, self.max_ops + 1):
                if not self._wait():
                    return
                self._write(proc, client, key, proc * 1_000_000 + seq)   # unique per key, increasing per writer
        return write_loop

    def _write(self, proc: int, client: Client, key: str, value: int) -> None:
        handle = self.history.invoke(proc, "write", key, value)
        read = self._read(client, proc, key, _register_of)
        if read is None:
            self.history.complete(handle, "fail", {"observed": None, "error": "read failed"})
            return
        observed, context = read
        try:
            self._put(client, key, str(value).encode(), context)
        except LeaderlessError as exc:
            self.history.complete(handle, outcome_of("write", exc),
                                  {"observed": observed, "error": f"{type(exc).__name__}: {exc}"})
            return
        except BaseException:
            self.history.complete(handle, "info", {"observed": observed, "error": "workload crashed"})
            raise
        self.history.complete(handle, "ok", {"observed": observed})

    def _reader(self, proc: int, client: Client, rng: random.Random) -> None:
        for _ in range(self.max_ops):
            if not self._wait():
                return
            self._read(client, proc, rng.choice(self.keys), _register_of)

    def _final_value(self, result: Any) -> list[Any]:
        return parse_register(result.values)

    def check(self, final_reads: Mapping[str, Any]) -> dict[str, Any]:
        return check_register(self.history, final_reads)


class CounterWorkload(Workload):
    """Increments and decrements of a few keys of a ``counter`` bucket, and reads of them."""

    name = "counter"
    bucket_type = "counter"
    own_bucket = True
    DELTAS = (1, 1, 2, 3, 5, -1, -2)

    def __init__(self, cluster: Any, history: History, *, keys: int = 2, incrementers: int = 4, readers: int = 2,
                 attempts: int = 3, **kwargs: Any) -> None:
        super().__init__(cluster, history, **kwargs)
        self.keys = [f"counter:{i}" for i in range(keys)]
        self.incrementers = incrementers
        self.readers = readers
        self.attempts = attempts

    def _plan(self) -> list[Any]:
        return [self._incrementer] * self.incrementers + [self._reader] * self.readers

    def _incrementer(self, proc: int, client: Client, rng: random.Random) -> None:
        for _ in range(self.max_ops):
            if not self._wait():
                return
            self._increment(proc, client, rng.choice(self.keys), rng.choice(self.DELTAS))

    def _increment(self, proc: int, client: Client, key: str, delta: int) -> None:
        handle = self.history.invoke(proc, "increment", key, delta)
        op = ("increment", delta) if delta >= 0 else ("decrement", -delta)
        try:        # retried inside on timeouts and QuorumFailed, with one operation id: applied at most once
            client.update(self.bucket, key, op, timeout=self.client_timeout, attempts=self.attempts)
        except LeaderlessError as exc:
            self.history.complete(handle, outcome_of("increment", exc), f"{type(exc).__name__}: {exc}")
            return
        except BaseException:
            self.history.complete(handle, "info", "workload crashed")
            raise
        self.history.complete(handle, "ok")

    def _reader(self, proc: int, client: Client, rng: random.Random) -> None:
        for _ in range(self.max_ops):
            if not self._wait():
                return
            self._read(client, proc, rng.choice(self.keys), _counter_of)

    def _final_value(self, result: Any) -> Any:
        return _counter_of(result)

    def check(self, final_reads: Mapping[str, Any]) -> dict[str, Any]:
        return check_counter(self.history, final_reads)


def _set_of(result: Any) -> set[str]:
    return parse_set(result.values)


def _register_of(result: Any) -> list[Any]:
    return parse_register(result.values)


def _counter_of(result: Any) -> Any:
    value = getattr(result, "value", None)
    return value if isinstance(value, int) else (0 if value is None else repr(value))


def make_workload(name: str, cluster: Any, history: History, **kwargs: Any) -> Workload:
    """The workload called ``name`` (one of ``WORKLOADS``)."""
    from .removal_workloads import DeleteWorkload, MapWorkload, OrSetWorkload
    from .serial_workloads import CasRegisterWorkload, UniqueWorkload

    classes: dict[str, type[Workload]] = {"set": SetWorkload, "orset": OrSetWorkload, "map": MapWorkload,
                                          "register": RegisterWorkload, "counter": CounterWorkload,
                                          "delete": DeleteWorkload, "cas-register": CasRegisterWorkload,
                                          "unique": UniqueWorkload}
    if name not in classes:
        raise InvalidRequest(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    return classes[name](cluster, history, **kwargs)


__all__ = ["LWW_WORKLOADS", "MODES", "WORKLOADS", "CounterWorkload", "RegisterWorkload", "SetWorkload", "Workload",
           "encode_set", "make_workload", "parse_register", "parse_set"]
