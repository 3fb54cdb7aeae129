"""Workloads that take things away: OR-set removes, map field removes, deletes (see ``actors.workloads``).

- ``orset``: threads add unique elements (``"p3-17"``) to a few keys of a ``set`` bucket and
  remove elements whose add was acknowledged: half of the removes (``1 - context_share``) go
  through the bucket API without a context (it reads first and raises ``NotPresent`` when
  its read misses the element), half carry the context of the thread's own recorded read,
  and only of an element that read returned. Some elements are removed, most are kept.
- ``map``: each thread owns its fields of a few keys of a ``map`` bucket: register fields
  it assigns again and again (unique values), a set field it adds unique elements to and
  removes seen ones from, and short-lived fields (register, flag or set) created by one
  update and later removed whole. No counter fields: a map's counter field is not
  exactly-once across retries built by another replica.
- ``delete``: one writer per key writes unique integers (read, then write with the read's
  context), now and then deletes the key with the context of a read, and writes it again.

Each remove or delete names what its read observed, so the checkers can tell an element
that was rightly kept (added after the read) from one that came back.
"""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Mapping
from typing import Any

from .buckets import Bucket
from .checker import check_delete, check_map, check_orset
from .errors import InvalidRequest, LeaderlessError
from .history import History, outcome_of
from .messages import Value
from .workloads import Workload, parse_register


class _Pool:
    """Things a workload may remove (elements whose add was acknowledged), per key, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[Any, list[Any]] = {}

    def put(self, key: Any, item: Any) -> None:
        with self._lock:
            self._items.setdefault(key, []).append(item)

    def take(self, key: Any, rng: random.Random, among: Any = None) -> Any:
        """A random item of ``key`` (one of ``among`` when given), taken out; None when there is none."""
        with self._lock:
            items = self._items.get(key, [])
            choices = [i for i, item in enumerate(items) if among is None or item in among]
            if not choices:
                return None
            return items.pop(rng.choice(choices))

    def has(self, key: Any) -> bool:
        with self._lock:
            return bool(self._items.get(key))


class _RemovingWorkload(Workload):
    """Shared steps: typed buckets on the thread's client, recorded reads, recorded CRDT ops."""

    attempts = 3

    def _bucket(self, client: Any) -> Bucket:
        if self.props is None:
            raise InvalidRequest(f"the {self.name} workload's bucket was not created")
        return Bucket(client, self.props)

    def _op(self, proc: int, kind: str, key: str, value: Any, call: Any) -> str:
        """Run ``call()`` (a CRDT operation, retried inside with one op id) as a recorded op; its outcome."""
        handle = self.history.invoke(proc, kind, key, value)
        try:
            call()
        except LeaderlessError as exc:      # NotPresent (nothing written): fail; timeouts, quorums: info
            outcome = outcome_of(kind, exc)
            self.history.complete(handle, outcome, f"{type(exc).__name__}: {exc}")
            return outcome
        except BaseException:
            self.history.complete(handle, "info", "workload crashed")
            raise
        self.history.complete(handle, "ok")
        return "ok"

    def _read_value(self, proc: int, bucket: Bucket, key: str, parse: Any) -> tuple[Any, Any] | None:
        """A recorded read of a CRDT key: ``(parse(value), context)``, or None when it failed."""
        handle = self.history.invoke(proc, "read", key)
        try:
            result = bucket.read(key, timeout=self.client_timeout)
        except LeaderlessError as exc:
            self.history.complete(handle, "fail", f"{type(exc).__name__}: {exc}")
            return None
        except BaseException as exc:
            self.history.complete(handle, "fail", f"{type(exc).__name__}: {exc}")
            raise
        value = parse(result.value if isinstance(result, Value) else None)
        self.history.complete(handle, "ok", value)
        return value, result.context

    def _options(self, context: Any = None) -> dict[str, Any]:
        """Options of a CRDT call; a remove's ``context`` only when it has one (else the API reads first)."""
        options: dict[str, Any] = {"timeout": self.client_timeout, "attempts": self.attempts}
        if context is not None:
            options["context"] = context
        return options


class OrSetWorkload(_RemovingWorkload):
    """Unique elements added to and removed from a few keys of a ``set`` bucket."""

    name = "orset"
    bucket_type = "set"
    own_bucket = True

    def __init__(self, cluster: Any, history: History, *, clients: int = 5, keys: int = 3,
                 remove_share: float = 0.3, read_share: float = 0.1, context_share: float = 0.5, attempts: int = 3,
                 **kwargs: Any) -> None:
        super().__init__(cluster, history, **kwargs)
        self.clients = clients
        self.context_share = context_share
        self.keys = [f"orset:{i}" for i in range(keys)]
        self.remove_share = remove_share
        self.read_share = read_share
        self.attempts = attempts
        self._acked = _Pool()

    def _plan(self) -> list[Any]:
        return [self._loop] * self.clients

    def _loop(self, proc: int, client: Any, rng: random.Random) -> None:
        bucket = self._bucket(client)
        for seq in range(self.max_ops):
            if not self._wait():
                return
            key = rng.choice(self.keys)
            roll = rng.random()
            if roll < self.remove_share and self._acked.has(key):
                self._remove(proc, bucket, key, rng)
            elif roll < self.remove_share + self.read_share:
                self._read_value(proc, bucket, key, _sorted_elements)
            else:
                element = f"p{proc}-{seq}"
                add = functools.partial(bucket.add, key, element, **self._options())
                if self._op(proc, "add", key, element, add) == "ok":
                    self._acked.put(key, element)

    def _remove(self, proc: int, bucket: Bucket, key: str, rng: random.Random) -> None:
        context = None
        if rng.random() < self.context_share:   # remove what our own read saw, with its context
            read = self._read_value(proc, bucket, key, _sorted_elements)
            if read is None:
                return
            seen, context = read
            element = self._acked.take(key, rng, among=set(seen))
            if element is None:
                return
        else:                                   # the bucket API reads first (NotPresent if its read misses it)
            element = self._acked.take(key, rng)
        outcome = self._op(proc, "remove", key, element,
                           lambda: bucket.remove(key, element, **self._options(context)))
        if outcome == "fail":                   # nothing was removed: it may be removed later
            self._acked.put(key, element)

    def _final_value(self, result: Any) -> list[Any]:
        return _sorted_elements(result.value if isinstance(result, Value) else None)

    def check(self, final_reads: Mapping[str, Any]) -> dict[str, Any]:
        return check_orset(self.history, final_reads)


class MapWorkload(_RemovingWorkload):
    """Field updates and removes on a few keys of a ``map`` bucket; every field name belongs to one thread."""

    name = "map"
    bucket_type = "map"
    own_bucket = True
    TEMP_TYPES = ("register", "flag", "set")

    def __init__(self, cluster: Any, history: History, *, clients: int = 4, keys: int = 2, attempts: int = 3,
                 context_share: float = 0.5, **kwargs: Any) -> None:
        super().__init__(cluster, history, **kwargs)
        self.clients = clients
        self.context_share = context_share
        self.keys = [f"map:{i}" for i in range(keys)]
        self.attempts = attempts
        self._elements = _Pool()           # (key, proc) -> acknowledged elements of the thread's set field
        self._temporary = _Pool()          # (key, proc) -> acknowledged short-lived fields (name, type)

    def _plan(self) -> list[Any]:
        return [self._loop] * self.clients

    def _loop(self, proc: int, client: Any, rng: random.Random) -> None:
        bucket = self._bucket(client)
        for seq in range(self.max_ops):
            if not self._wait():
                return
            key = rng.choice(self.keys)
            roll = rng.random()
            if roll < 0.25:
                field = f"p{proc}.reg{rng.randrange(2)}"
                self._update(proc, bucket, key, field, "register", "assign", f"p{proc}-{seq}")
            elif roll < 0.5:
                element = f"p{proc}-{seq}"
                if self._update(proc, bucket, key, f"p{proc}.set", "set", "add", element) == "ok":
                    self._elements.put((key, proc), element)
            elif roll < 0.65:
                self._remove_element(proc, bucket, key, rng)
            elif roll < 0.85:
                ftype = rng.choice(self.TEMP_TYPES)
                field = f"p{proc}.t{seq}"
                verb, arg = {"register": ("assign", f"p{proc}-{seq}"), "flag": ("enable", None),
                             "set": ("add", f"p{proc}-{seq}")}[ftype]
                if self._update(proc, bucket, key, field, ftype, verb, arg) == "ok":
                    self._temporary.put((key, proc), (field, ftype))
            else:
                self._remove_field(proc, bucket, key, rng)

    def _update(self, proc: int, bucket: Bucket, key: str, field: str, ftype: str, verb: str, arg: Any) -> str:
        op = (verb,) if arg is None else (verb, arg)
        value = {"field": field, "type": ftype, "op": verb, "arg": arg}
        return self._op(proc, "field-update", key, value,
                        lambda: bucket.update(key, field, ftype, op, **self._options()))

    def _context_read(self, proc: int, bucket: Bucket, key: str, rng: random.Random) -> tuple[bool, Any, Any]:
        """Now and then (``context_share``) a recorded read whose context the remove carries: (go on, fields,
        context); otherwise (True, None, None): the bucket API reads first."""
        if rng.random() >= self.context_share:
            return True, None, None               # the bucket API reads first
        read = self._read_value(proc, bucket, key, _map_value)
        if read is None:
            return False, None, None
        fields, context = read
        return True, {(name, ftype): value for name, ftype, value in fields}, context

    def _remove_element(self, proc: int, bucket: Bucket, key: str, rng: random.Random) -> None:
        field = f"p{proc}.set"
        go, seen, context = self._context_read(proc, bucket, key, rng)
        if not go:
            return
        among = None if seen is None else set(seen.get((field, "set"), ()))
        element = self._elements.take((key, proc), rng, among=among)
        if element is None:
            return
        value = {"field": field, "type": "set", "element": element}
        outcome = self._op(proc, "elem-remove", key, value, lambda: bucket.update(
            key, field, "set", ("remove", element), **self._options(context)))
        if outcome == "fail":
            self._elements.put((key, proc), element)

    def _remove_field(self, proc: int, bucket: Bucket, key: str, rng: random.Random) -> None:
        go, seen, context = self._context_read(proc, bucket, key, rng)
        if not go:
            return
        target = self._temporary.take((key, proc), rng, among=None if seen is None else set(seen))
        if target is None:
            return
        field, ftype = target
        outcome = self._op(proc, "field-remove", key, {"field": field, "type": ftype}, lambda: bucket.remove(
            key, (field, ftype), **self._options(context)))
        if outcome == "fail":
            self._temporary.put((key, proc), target)

    def _final_value(self, result: Any) -> list[Any]:
        return _map_value(result.value if isinstance(result, Value) else None)

    def check(self, final_reads: Mapping[str, Any]) -> dict[str, Any]:
        return check_map(self.history, final_reads)


class DeleteWorkload(Workload):
    """One writer per key: writes (read, then put with the context), deletes with a read's context, writes again."""

    name = "delete"

    def __init__(self, cluster: Any, history: History, *, keys: int = 4, readers: int = 1,
                 delete_share: float = 0.3, **kwargs: Any) -> None:
        super().__init__(cluster, history, **kwargs)
        self.keys = [f"del:{i}" for i in range(keys)]
        self.readers = readers
        self.delete_share = delete_share

    def _plan(self) -> list[Any]:
        return [self._writer(key) for key in self.keys] + [self._reader] * self.readers

    def _writer(self, key: str) -> Any:
        def loop(proc: int, client: Any, rng: random.Random) -> None:
            for seq in range(1, self.max_ops + 1):
                if not self._wait():
                    return
                if rng.random() < self.delete_share:
                    self._change(proc, client, key, "delete", f"del-p{proc}-{seq}")
                else:
                    self._change(proc, client, key, "write", proc * 1_000_000 + seq)
        return loop

    def _change(self, proc: int, client: Any, key: str, kind: str, value: Any) -> None:
        handle = self.history.invoke(proc, kind, key, value)
        read = self._read(client, proc, key, parse_register_result)
        if read is None:
            self.history.complete(handle, "fail", {"observed": None, "error": "read failed"})
            return
        observed, context = read
        try:
            if kind == "write":
                self._put(client, key, str(value).encode(), context)
            else:
                client.delete_async(key, context, bucket=self.bucket).get(timeout=self.client_timeout + 1.0)
        except LeaderlessError as exc:
            self.history.complete(handle, outcome_of(kind, exc),
                                  {"observed": observed, "error": f"{type(exc).__name__}: {exc}"})
            return
        except BaseException:
            self.history.complete(handle, "info", {"observed": observed, "error": "workload crashed"})
            raise
        self.history.complete(handle, "ok", {"observed": observed})

    def _reader(self, proc: int, client: Any, rng: random.Random) -> None:
        for _ in range(self.max_ops):
            if not self._wait():
                return
            self._read(client, proc, rng.choice(self.keys), parse_register_result)

    def _final_value(self, result: Any) -> list[Any]:
        return parse_register(result.values)

    def check(self, final_reads: Mapping[str, Any]) -> dict[str, Any]:
        return check_delete(self.history, final_reads)


def parse_register_result(result: Any) -> list[Any]:
    return parse_register(result.values)


def _sorted_elements(value: Any) -> list[Any]:
    return sorted(value or (), key=repr)


def _map_value(value: Any) -> list[list[Any]]:
    """A map's value as ``[[name, type, value], ...]`` (sets as sorted lists): JSON-ready, for the history."""
    out = []
    for (name, ftype), field_value in sorted((value or {}).items()):
        if ftype == "set":
            field_value = _sorted_elements(field_value)
        out.append([name, ftype, field_value])
    return out


__all__ = ["DeleteWorkload", "MapWorkload", "OrSetWorkload"]
