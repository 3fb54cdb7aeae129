"""One store per node: objects, hints and metadata behind a small backend interface.

`Store` is the interface; `LmdbStore` keeps everything in one LMDB environment
(named databases ``objects``, ``hints`` and ``meta``) and `MemoryStore` keeps it
in dicts for fast tests. Both pass one contract test suite.

Reads: `Store.get` reads one key; `Store.get_many` several in one snapshot; for a
batch of reads interleaved with other work, ``with store.reader() as get:`` gives a
`get` bound to one snapshot (one LMDB read transaction), the cheapest per key.

Writes are batched by the caller: one `Store.apply` is one transaction, durable
(fsync'd) when it returns for ``LmdbStore(sync=True)``, so many writes share one
fsync (group commit). A synced `LmdbStore` logs batches of objects to a write-ahead
log (``wal.log`` beside the LMDB files, `storage.wal`) and moves them into LMDB at
checkpoints; see "the write-ahead log" below. Errors: `StoreError`, and its subclass
`StoreFull` whenever there is no room: the LMDB map is full, or the disk (or the user's
quota) is, for a log append, an LMDB commit, a checkpoint, hints or metadata alike
(nothing of that batch is written; reads go on, and writes succeed again once there is
room). Records that cannot be
encoded or decoded raise `storage.codec.CodecError`; bad keys raise `ValueError`.

A hint's id is its target's utf-8 name, a NUL byte, then an 8-byte big-endian
sequence number (nanoseconds since the epoch, strictly increasing per store),
so the hints for one target are one ordered key range.
"""

from __future__ import annotations

import errno
import heapq
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, NamedTuple, Protocol, runtime_checkable

import lmdb

from storage.codec import FORMAT_V1, CodecError, decode_object, encode_object
from storage.objects import Obj
from storage.wal import WalFull, WriteAheadLog

__all__ = ["Hint", "LmdbStore", "MemoryStore", "Store", "StoreError", "StoreFull", "open_store"]

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 511
"""LMDB's default maximum key size; both backends enforce it."""

_CHUNK = 256  # records read per transaction by items()/keys(), so no reader pins old pages for long
MEMTABLE_KEYS = 16384  # logged objects held before they are written into LMDB (a checkpoint)
WAL_BYTES = 16 << 20  # log size that forces a checkpoint (at most an eighth of the map)
_SEQ = struct.Struct(">Q")
_HINT_HEADER = struct.Struct(">BdH")  # format byte, created, length of the key
_OPEN_PATHS: set[str] = set()  # LMDB must not be opened twice in one process
_OPEN_LOCK = threading.Lock()


class StoreError(Exception):
    """The store could not do what was asked."""


class StoreFull(StoreError):
    """No room: the LMDB map or the disk (or the quota) is full; nothing of the failed batch was written."""


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def _storage_error(exc: BaseException, what: str, path: str) -> StoreError:
    """The `StoreError` for an LMDB or OS error: `StoreFull` for every kind of "no room" (a full map,
    ENOSPC, EDQUOT, and LMDB's DiskError that wraps ENOSPC), so a full disk reaches the client as
    ``StorageFull`` however it shows; a clear message for EIO (the disk itself failing)."""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else getattr(exc, "code", None)
    if isinstance(exc, lmdb.DiskError) or code in _NO_ROOM:
        log.error("no room on the disk of %s: %s failed: %s", path, what, exc)
        return StoreFull(f"no room on the disk of {path}: {what} failed ({exc}): nothing of this batch was written")
    if code == errno.EIO:
        log.error("disk I/O error at %s: %s failed: %s", path, what, exc)
        return StoreError(f"disk I/O error at {path}: {what} failed ({exc}); the disk may be failing")
    return StoreError(f"{what} failed at {path}: {exc}")


class Hint(NamedTuple):
    """A write held for a node that was down (hinted handoff)."""

    hint_id: bytes
    """Unique; orders the hints of one target by age."""
    target: str
    """The node the write is meant for."""
    key: str
    """The key written."""
    obj: Obj
    """The object to hand off (the receiver syncs it)."""
    created: float
    """`time.time()` when the hint was stored."""


@runtime_checkable
class Store(Protocol):
    """The storage backend of one node; keys are 1 to `MAX_KEY_BYTES` utf-8 bytes."""

    def get(self, key: str) -> Obj | None:
        """The object stored under `key`, or None."""

    def get_many(self, keys: Iterable[str]) -> dict[str, Obj | None]:
        """The objects under `keys`, read in one snapshot."""

    def get_records(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """The encoded records under `keys` (``codec.decode_object`` reads them), in one snapshot."""

    def reader(self) -> AbstractContextManager[Callable[[str], Obj | None]]:
        """A context giving a `get` that reads one snapshot for its whole block (one thread, briefly):
        ``with store.reader() as get: a, b = get(k1), get(k2)``; cheaper per key than `get`."""

    def apply(
        self,
        objects: Iterable[tuple[str, Obj]] = (),
        hints: Iterable[tuple[str, str, Obj]] = (),
        deletes: Iterable[str] = (),
        paxos: Iterable[tuple[str, bytes]] = (),
    ) -> None:
        """In one transaction: put (key, obj) pairs, add (target, key, obj) hints, delete keys, and set
        (key, state) Paxos acceptor states."""

    def paxos_get(self, key: str) -> bytes | None:
        """The Paxos acceptor state last set for `key` (opaque bytes), or None."""

    def items(self, start: str | None = None) -> Iterator[tuple[str, Obj]]:
        """(key, obj) sorted by key from `start` (inclusive); safe while writes continue."""

    def keys(self) -> Iterator[str]:
        """Every key, sorted."""

    def count(self) -> int:
        """The number of keys."""

    def hints(self, target: str | None = None, limit: int | None = None) -> list[Hint]:
        """At most `limit` hints for `target` (None: every target), oldest first."""

    def delete_hints(self, hint_ids: Iterable[bytes]) -> None:
        """Remove hints (delivered ones) in one durable transaction; unknown ids are ignored."""

    def hint_count(self) -> int:
        """The number of hints held."""

    def log_state(self) -> dict[str, int]:
        """The write-ahead log: ``logged_keys`` not yet in the main store, ``log_bytes``, ``checkpoints`` done."""

    def meta_get(self, name: str) -> bytes | None:
        """A metadata value, or None."""

    def meta_put(self, name: str, value: bytes) -> None:
        """Store a metadata value durably."""

    def close(self) -> None:
        """Release the store; idempotent. Any other call afterwards raises `StoreError`."""


def _key_bytes(key: str) -> bytes:
    data = key.encode("utf-8")
    if not 0 < len(data) <= MAX_KEY_BYTES:
        raise ValueError(f"a key must be 1 to {MAX_KEY_BYTES} utf-8 bytes, got {len(data)}")
    return data


def _valid(key: str) -> str:
    _key_bytes(key)
    return key


def _hint_prefix(target: str) -> bytes:
    if "\x00" in target:
        raise ValueError(f"a hint target must not contain NUL: {target!r}")
    return _key_bytes(target) + b"\x00"


class _HintIds:
    """Fresh hint ids: strictly increasing sequence numbers taken from the wall clock."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self, target: str) -> bytes:
        prefix = _hint_prefix(target)
        if len(prefix) + _SEQ.size > MAX_KEY_BYTES:
            raise ValueError(f"hint target name too long: {target!r}")
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return prefix + _SEQ.pack(self._last)


def _pack_hint(key: str, obj: Obj, created: float) -> bytes:
    data = _key_bytes(key)
    return _HINT_HEADER.pack(FORMAT_V1, created, len(data)) + data + encode_object(obj)


def _unpack_hint(hint_id: bytes, record: bytes) -> Hint:
    fmt, created, length = _HINT_HEADER.unpack_from(record)
    if fmt != FORMAT_V1:
        raise CodecError(f"unknown hint format byte {fmt}")
    start = _HINT_HEADER.size
    key = record[start : start + length].decode("utf-8")
    obj = decode_object(record[start + length :])
    return Hint(hint_id, hint_id[: -_SEQ.size - 1].decode("utf-8"), key, obj, created)


def _select_hints(records: Iterable[tuple[bytes, bytes]], target: str | None, limit: int | None) -> list[Hint]:
    """The oldest hints (for `target`, or all) from (hint_id, record) pairs sorted by id."""
    if target is None:
        def age(pair: tuple[bytes, bytes]) -> bytes:
            return pair[0][-_SEQ.size :]

        chosen = sorted(records, key=age) if limit is None else heapq.nsmallest(limit, records, key=age)
        return [_unpack_hint(hint_id, record) for hint_id, record in chosen]
    prefix, found = _hint_prefix(target), list[Hint]()
    for hint_id, record in records:
        if limit is not None and len(found) >= limit:
            break
        if hint_id.startswith(prefix):
            found.append(_unpack_hint(hint_id, record))
        elif hint_id > prefix:
            break
    return found


class LmdbStore:
    """A `Store` in one LMDB environment: one writer thread, any number of reader threads."""

    def __init__(self, path: str, *, map_size: int = 16 << 30, sync: bool = True, wal: bool | None = None) -> None:
        self._path = os.path.realpath(path)
        self._map_size = map_size
        self._lock = threading.RLock()              # apply and checkpoint: one writer at a time
        self._memtable: dict[str, bytes] = {}       # logged, not yet in LMDB: key -> record
        self._wal: WriteAheadLog | None = None
        self._wal_limit = min(WAL_BYTES, map_size // 8)
        self._absent: tuple[dict[str, bytes], dict[str, bool], int] | None = None   # count(): logged keys LMDB lacks
        self._generation = 0            # odd while a checkpoint moves the memtable into LMDB
        self._checkpoints = 0
        with _OPEN_LOCK:
            if self._path in _OPEN_PATHS:
                raise StoreError(f"LMDB environment {self._path} is already open in this process")
            try:
                os.makedirs(self._path, exist_ok=True)
                env = lmdb.open(
                    self._path, map_size=map_size, subdir=True, max_dbs=8, sync=sync, writemap=False, lock=True
                )
            except (OSError, lmdb.Error) as exc:
                raise _storage_error(exc, "opening the LMDB environment", self._path) from exc
            _OPEN_PATHS.add(self._path)
        self._env: lmdb.Environment | None = env
        stale = env.reader_check()
        if stale:
            log.info("cleared %d stale LMDB readers in %s", stale, self._path)
        self._objects = env.open_db(b"objects")
        self._hints = env.open_db(b"hints")
        self._meta = env.open_db(b"meta")
        self._paxos = env.open_db(b"paxos")
        self._hint_ids = _HintIds()
        if sync if wal is None else wal:
            try:
                self._wal = WriteAheadLog(os.path.join(self._path, "wal.log"))
                self._replay()
            except OSError as exc:
                self.close()
                raise _storage_error(exc, "opening the write-ahead log", self._path) from exc
            except StoreError:
                self.close()
                raise
        log.debug("opened LMDB store %s (map_size=%d, sync=%s, wal=%s)", self._path, map_size, sync,
                  self._wal is not None)

    # --- the write-ahead log ------------------------------------------------------------------
    #
    # With a log (the default for a synced store), a batch of objects is durable once it is
    # appended to ``wal.log`` and fdatasync'd: a small sequential write, where an LMDB commit
    # writes and syncs a page per object (about 5 KB per write at 10,000 random keys). The
    # objects wait in ``_memtable``, where reads find them, until ``MEMTABLE_KEYS`` distinct
    # keys or ``_wal_limit`` bytes of log gather; a checkpoint then writes them into LMDB in
    # one synced transaction (writes to one page share it) and empties the log. Hints and
    # deletes are rare (failures, handoff, reaping): a batch holding any checkpoints first
    # and commits to LMDB as before. After a crash, ``_replay`` brings the log's batches
    # back at open, in order; a checkpoint interrupted by the crash is redone.

    def _replay(self) -> None:
        assert self._wal is not None
        batches = 0
        for entries in self._wal.replay():
            batches += 1
            for key, record in entries:
                self._memtable[key.decode("utf-8")] = record
        if not batches:
            return
        log.info("store %s: %d logged batches (%d keys) replayed", self._path, batches, len(self._memtable))
        try:
            self._checkpoint()
        except StoreFull:
            log.error("store %s: the logged writes do not fit in the LMDB map; they stay in the log, readable, "
                      "and writes are refused until there is room", self._path)

    def _checkpoint(self) -> None:
        """Write the logged objects into LMDB (one synced transaction), then empty the log."""
        with self._lock:
            memtable = self._memtable
            if not memtable or self._wal is None:
                return
            items = sorted((key.encode("utf-8"), record) for key, record in memtable.items())
            self._generation += 1
            try:
                self._write(lambda txn: txn.cursor(db=self._objects).putmulti(items))
                try:
                    self._wal.reset()
                except OSError as exc:  # LMDB holds them now; replaying the log again would only redo them
                    raise _storage_error(exc, "emptying the write-ahead log", self._path) from exc
                self._memtable = {}     # only now: until the log is empty, the next checkpoint retries it
                self._checkpoints += 1
            finally:
                self._generation += 1

    def checkpoint(self) -> None:
        """Move logged writes into LMDB now (they are durable either way)."""
        self._checkpoint()

    def _environment(self) -> lmdb.Environment:
        if self._env is None:
            raise StoreError(f"store {self._path} is closed")
        return self._env

    def _write(self, work: Callable[[lmdb.Transaction], object]) -> None:
        """Run `work` in one write transaction, translating LMDB's errors."""
        try:
            with self._environment().begin(write=True) as txn:
                work(txn)
        except lmdb.MapFullError as exc:
            log.error("LMDB map of %d bytes at %s is full; a batch was refused", self._map_size, self._path)
            raise StoreFull(
                f"LMDB map of {self._map_size} bytes at {self._path} is full: nothing of this batch "
                "was written (reopen with a larger map_size)"
            ) from exc
        except (lmdb.Error, OSError) as exc:
            raise _storage_error(exc, "an LMDB write", self._path) from exc

    def get(self, key: str) -> Obj | None:
        logged = self._memtable.get(key)
        if logged is not None:
            return decode_object(logged)
        data = _key_bytes(key)
        txn = self._environment().begin(db=self._objects)
        try:
            record = txn.get(data)
        finally:
            txn.abort()  # ends a read-only transaction like commit, a little cheaper
        return None if record is None else decode_object(record)

    def get_many(self, keys: Iterable[str]) -> dict[str, Obj | None]:
        return {key: None if record is None else decode_object(record)
                for key, record in self.get_records(keys).items()}

    def get_records(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        memtable = self._memtable
        if not memtable:
            wanted = [(key, _key_bytes(key)) for key in keys]
            with self._environment().begin(db=self._objects) as txn:
                get = txn.get
                return {key: get(data) for key, data in wanted}
        found: dict[str, bytes | None] = {}
        wanted = []
        for key in keys:
            logged = memtable.get(key)
            if logged is not None:
                found[key] = logged
            else:
                wanted.append((key, _key_bytes(key)))
        if wanted:
            with self._environment().begin(db=self._objects) as txn:
                get = txn.get
                for key, data in wanted:
                    found[key] = get(data)
        return found

    @contextmanager
    def reader(self) -> Iterator[Callable[[str], Obj | None]]:
        """A `get` reading one snapshot (one LMDB read transaction) for the whole block.

        Cheaper per key than `get` for a batch of reads. Use it in one thread, and
        briefly: an open read transaction keeps LMDB from reusing the pages it sees.
        """
        with self._lock:                       # the logged writes as of the snapshot, with it
            logged = dict(self._memtable)
            txn = self._environment().begin(db=self._objects)
        with txn:
            get_record = txn.get

            def get(key: str) -> Obj | None:
                record = logged.get(key)
                if record is None:
                    record = get_record(_key_bytes(key))
                return None if record is None else decode_object(record)

            yield get

    def apply(
        self,
        objects: Iterable[tuple[str, Obj]] = (),
        hints: Iterable[tuple[str, str, Obj]] = (),
        deletes: Iterable[str] = (),
        paxos: Iterable[tuple[str, bytes]] = (),
    ) -> None:
        """Put `objects`, add `hints`, remove `deletes` and set `paxos` states, all in one durable
        transaction (objects alone: one durable append to the write-ahead log, when the store has one)."""
        created = time.time()
        keyed = [(key, _key_bytes(key), encode_object(obj)) for key, obj in objects]
        held = [(target, _pack_hint(key, obj, created)) for target, key, obj in hints]
        removed = [_key_bytes(key) for key in deletes]
        ballots = [(_key_bytes(key), bytes(state)) for key, state in paxos]
        with self._lock:
            if self._wal is not None and not held and not removed and not ballots:
                if not keyed:
                    return
                size = sum(len(data) + len(record) for _, data, record in keyed)
                if size <= self._wal_limit:    # else too big to log: straight into LMDB, as without a log
                    self._log(keyed, size)
                    return
            self._checkpoint()                 # logged writes first, so this batch's come after them
            self._commit([(data, record) for _, data, record in keyed], held, removed, ballots)

    def _log(self, keyed: list[tuple[str, bytes, bytes]], size: int) -> None:
        """Log the batch durably and keep it in the memtable. The log never holds more than
        ``_wal_limit`` bytes (an eighth of the map at most), so a full map shows at the
        checkpoint before a batch is logged, and that batch is refused."""
        assert self._wal is not None
        if len(self._memtable) >= MEMTABLE_KEYS or self._wal.size + size > self._wal_limit:
            self._checkpoint()                 # StoreFull here refuses the batch before it is logged
        self._environment()                    # a closed store refuses, as LMDB would
        try:
            self._wal.append([(data, record) for _, data, record in keyed])
        except WalFull as exc:
            log.error("no room on disk for the write-ahead log of %s; a batch was refused", self._path)
            raise StoreFull(f"{exc}: nothing of this batch was written") from exc
        except OSError as exc:
            raise _storage_error(exc, "a write-ahead log append", self._path) from exc
        # One ``update``: a reader in another thread sees all of the batch or none of it.
        self._memtable.update({key: record for key, _, record in keyed})

    def _commit(self, puts: list[tuple[bytes, bytes]], held: list[tuple[str, bytes]], removed: list[bytes],
                ballots: list[tuple[bytes, bytes]] | None = None) -> None:
        def work(txn: lmdb.Transaction) -> None:
            if puts:
                txn.cursor(db=self._objects).putmulti(puts)  # one call into LMDB; later pairs win
            for target, record in held:
                while not txn.put(self._hint_ids.next(target), record, db=self._hints, overwrite=False):
                    pass  # an id left by an earlier run with a clock set back: take the next one
            for data in removed:
                txn.delete(data, db=self._objects)
            for data, state in ballots or ():
                txn.put(data, state, db=self._paxos)

        self._write(work)

    def paxos_get(self, key: str) -> bytes | None:
        txn = self._environment().begin(db=self._paxos)
        try:
            state = txn.get(_key_bytes(key))
        finally:
            txn.abort()
        return None if state is None else bytes(state)

    def _scan(self, db: lmdb._Database, start: bytes, values: bool = True) -> Iterator[tuple[bytes, bytes]]:
        """Records from `start` on, read `_CHUNK` at a time so no reader pins old pages for long."""
        after: bytes | None = None  # the last key yielded: the next chunk starts after it
        while True:
            with self._environment().begin(db=db) as txn:
                cursor = txn.cursor()
                seek = after or start
                found = cursor.set_range(seek) if seek else cursor.first()
                chunk: list[tuple[bytes, bytes]] = []
                while found and len(chunk) < _CHUNK:
                    if cursor.key() != after:
                        chunk.append((cursor.key(), cursor.value() if values else b""))
                    found = cursor.next()
            yield from chunk
            if not found:
                return
            after = chunk[-1][0]

    def items(self, start: str | None = None) -> Iterator[tuple[str, Obj]]:
        for data, record in self._scan_objects(start.encode("utf-8") if start else b""):
            yield data.decode("utf-8"), decode_object(record)

    def keys(self) -> Iterator[str]:
        for data, _ in self._scan_objects(b"", values=False):
            yield data.decode("utf-8")

    def _scan_objects(self, start: bytes, values: bool = True) -> Iterator[tuple[bytes, bytes]]:
        """Every object record from `start` on: LMDB alone after a checkpoint; when the checkpoint cannot
        run (no room on the disk), LMDB's records with the logged ones merged in (theirs win), so scans
        (anti-entropy, handoff) go on reading while writes are refused."""
        try:
            self._checkpoint()
        except StoreError as exc:
            log.debug("store %s: scanning with the log merged in (no checkpoint: %s)", self._path, exc)
            with self._lock:
                logged = sorted((key.encode("utf-8"), record) for key, record in self._memtable.items())
            merged = heapq.merge(((data, 0, record) for data, record in logged if data >= start),
                                 ((data, 1, record) for data, record in self._scan(self._objects, start, values)))
            last = None
            for data, _, record in merged:
                if data != last:
                    yield data, record if values else b""
                last = data
            return
        yield from self._scan(self._objects, start, values)

    def count(self) -> int:
        """LMDB's entries plus the logged keys LMDB lacks. Which logged keys LMDB lacks is
        remembered per memtable (until the checkpoint that replaces it), so a status call
        under steady writes looks up only the keys logged since the last call."""
        for _ in range(3):
            generation = self._generation
            memtable = self._memtable           # replaced, never emptied, by a checkpoint
            cached = self._absent
            usable = generation % 2 == 0 and cached is not None and cached[0] is memtable and cached[2] == generation
            absent = dict(cached[1]) if usable else {}   # a copy: other threads may count at the same time
            fresh = [key for key in list(memtable) if key not in absent]
            with self._environment().begin(db=self._objects) as txn:
                entries = int(txn.stat(self._objects)["entries"])
                for key in fresh:
                    absent[key] = txn.get(key.encode("utf-8")) is None
            if self._generation == generation and generation % 2 == 0:
                self._absent = (memtable, absent, generation)
                return entries + sum(absent.values())
            self._absent = None                 # a checkpoint ran meanwhile: look again
        with self._lock:                        # checkpoints keep coming: count with them held off
            memtable = self._memtable
            with self._environment().begin(db=self._objects) as txn:
                entries = int(txn.stat(self._objects)["entries"])
                return entries + sum(txn.get(key.encode("utf-8")) is None for key in memtable)

    def hints(self, target: str | None = None, limit: int | None = None) -> list[Hint]:
        start = b"" if target is None else _hint_prefix(target)
        records = self._scan(self._hints, start)
        return _select_hints(records, target, limit)

    def delete_hints(self, hint_ids: Iterable[bytes]) -> None:
        doomed = list(hint_ids)

        def work(txn: lmdb.Transaction) -> None:
            for hint_id in doomed:
                txn.delete(hint_id, db=self._hints)

        self._write(work)

    def hint_count(self) -> int:
        with self._environment().begin() as txn:
            return int(txn.stat(self._hints)["entries"])

    def log_state(self) -> dict[str, int]:
        wal = self._wal
        return {"logged_keys": len(self._memtable), "log_bytes": wal.size if wal is not None else 0,
                "checkpoints": self._checkpoints}

    def meta_get(self, name: str) -> bytes | None:
        with self._environment().begin(db=self._meta) as txn:
            value: bytes | None = txn.get(_key_bytes(name))
            return value

    def meta_put(self, name: str, value: bytes) -> None:
        data = _key_bytes(name)
        self._write(lambda txn: txn.put(data, bytes(value), db=self._meta))

    def close(self) -> None:
        """Close the environment (after a last checkpoint); later calls do nothing."""
        with self._lock:
            if self._env is not None and self._memtable:
                try:
                    self._checkpoint()
                except StoreError as exc:      # the writes stay in the log for the next open
                    log.warning("store %s: no checkpoint at close: %s", self._path, exc)
            if self._wal is not None:
                self._wal.close()
        env, self._env = self._env, None
        if env is not None:
            env.close()
            with _OPEN_LOCK:
                _OPEN_PATHS.discard(self._path)
            log.debug("closed LMDB store %s", self._path)


class MemoryStore:
    """A `Store` in dicts, with the same semantics as `LmdbStore` (records are encoded too)."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._hints: dict[bytes, bytes] = {}
        self._meta: dict[str, bytes] = {}
        self._paxos: dict[str, bytes] = {}
        self._hint_ids = _HintIds()
        self._lock = threading.Lock()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("memory store is closed")

    def get(self, key: str) -> Obj | None:
        _valid(key)
        with self._lock:
            self._check_open()
            record = self._objects.get(key)
        return None if record is None else decode_object(record)

    def get_many(self, keys: Iterable[str]) -> dict[str, Obj | None]:
        return {key: None if record is None else decode_object(record)
                for key, record in self.get_records(keys).items()}

    def get_records(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        wanted = [_valid(key) for key in keys]
        with self._lock:
            self._check_open()
            return {key: self._objects.get(key) for key in wanted}

    @contextmanager
    def reader(self) -> Iterator[Callable[[str], Obj | None]]:
        """A `get` reading one snapshot (a copy of the records, taken at the start) for the whole block."""
        with self._lock:
            self._check_open()
            records = dict(self._objects)

        def get(key: str) -> Obj | None:
            record = records.get(_valid(key))
            return None if record is None else decode_object(record)

        yield get

    def apply(
        self,
        objects: Iterable[tuple[str, Obj]] = (),
        hints: Iterable[tuple[str, str, Obj]] = (),
        deletes: Iterable[str] = (),
        paxos: Iterable[tuple[str, bytes]] = (),
    ) -> None:
        """Put `objects`, add `hints`, remove `deletes` and set `paxos` states, all at once."""
        created = time.time()
        puts = [(_valid(key), encode_object(obj)) for key, obj in objects]
        held = [(self._hint_ids.next(target), _pack_hint(key, obj, created)) for target, key, obj in hints]
        removed = [_valid(key) for key in deletes]
        ballots = [(_valid(key), bytes(state)) for key, state in paxos]
        with self._lock:
            self._check_open()
            self._objects.update(puts)
            self._hints.update(held)
            for key in removed:
                self._objects.pop(key, None)
            self._paxos.update(ballots)

    def paxos_get(self, key: str) -> bytes | None:
        with self._lock:
            self._check_open()
            return self._paxos.get(_valid(key))

    def items(self, start: str | None = None) -> Iterator[tuple[str, Obj]]:
        with self._lock:
            self._check_open()
            chosen = sorted(item for item in self._objects.items() if start is None or item[0] >= start)
        for key, record in chosen:
            yield key, decode_object(record)

    def keys(self) -> Iterator[str]:
        with self._lock:
            self._check_open()
            return iter(sorted(self._objects))

    def count(self) -> int:
        self._check_open()
        return len(self._objects)

    def hints(self, target: str | None = None, limit: int | None = None) -> list[Hint]:
        with self._lock:
            self._check_open()
            records = sorted(self._hints.items())
        return _select_hints(records, target, limit)

    def delete_hints(self, hint_ids: Iterable[bytes]) -> None:
        doomed = list(hint_ids)
        with self._lock:
            self._check_open()
            for hint_id in doomed:
                self._hints.pop(hint_id, None)

    def hint_count(self) -> int:
        self._check_open()
        return len(self._hints)

    def log_state(self) -> dict[str, int]:
        return {"logged_keys": 0, "log_bytes": 0, "checkpoints": 0}

    def meta_get(self, name: str) -> bytes | None:
        self._check_open()
        return self._meta.get(_valid(name))

    def meta_put(self, name: str, value: bytes) -> None:
        with self._lock:
            self._check_open()
            self._meta[_valid(name)] = bytes(value)

    def close(self) -> None:
        """Refuse further use; later calls do nothing."""
        self._closed = True


def open_store(path: str | None, **kw: Any) -> Store:
    """An `LmdbStore` at `path` (options `map_size`, `sync`), or a `MemoryStore` for None."""
    if path is None:
        return MemoryStore()
    return LmdbStore(path, **kw)
