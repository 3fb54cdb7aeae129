"""The write-ahead log under LmdbStore: torn tails, replay after a crash, checkpoints, a full disk, a full map."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from storage import store as store_module
from storage.store import LmdbStore, StoreFull
from storage.versions import update
from storage.wal import WriteAheadLog


def obj(value: bytes) -> object:
    return update(None, (), value, "t")


def test_replay_returns_whole_batches_in_order_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    path = str(tmp_path / "wal.log")
    wal = WriteAheadLog(path)
    wal.append([(b"a", b"1"), (b"b", b"2")])
    wal.append([(b"a", b"3")])
    whole = wal.size
    wal.close()
    with open(path, "ab") as f:                      # a crash in the middle of the next append
        f.write(b"\x00\x00\x00\x40\x12\x34partial")
    wal = WriteAheadLog(path)
    assert list(wal.replay()) == [[(b"a", b"1"), (b"b", b"2")], [(b"a", b"3")]]
    assert os.path.getsize(path) == whole == wal.size
    wal.append([(b"c", b"4")])                       # later appends follow the last whole batch
    wal.close()
    assert list(WriteAheadLog(path).replay())[-1] == [(b"c", b"4")]


def test_a_batch_whose_checksum_fails_ends_the_replay(tmp_path: Path) -> None:
    path = str(tmp_path / "wal.log")
    wal = WriteAheadLog(path)
    wal.append([(b"a", b"1")])
    first = wal.size
    wal.append([(b"b", b"2")])
    wal.close()
    with open(path, "r+b") as f:
        f.seek(first + 8 + 6)                        # inside the second batch's record
        f.write(b"X")
    assert list(WriteAheadLog(path).replay()) == [[(b"a", b"1")]]


def test_logged_writes_are_read_back_and_reach_lmdb_at_checkpoints(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MEMTABLE_KEYS", 10)
    store = LmdbStore(str(tmp_path / "db"))
    try:
        store.apply(objects=[(f"k{i}", obj(b"v%d" % i)) for i in range(8)])
        assert store._memtable and store.get("k3") == obj(b"v3")
        assert store.get_records(["k3", "nope"])["nope"] is None and store.count() == 8
        store.apply(objects=[(f"k{i}", obj(b"w%d" % i)) for i in range(8, 12)])   # 12 >= 10 keys next time
        store.apply(objects=[("k0", obj(b"new"))])                                 # checkpoints first
        assert set(store._memtable) == {"k0"} and store.count() == 12
        assert [k for k, _ in store.items()] == sorted(f"k{i}" for i in range(12))   # a scan checkpoints
        assert not store._memtable and store.get("k0") == obj(b"new")
        assert os.path.getsize(tmp_path / "db" / "wal.log") == 0
        store.apply(objects=[("k1", obj(b"x"))], deletes=["k2"])                   # a delete goes to LMDB
        assert store.get("k2") is None and store.get("k1") == obj(b"x")
    finally:
        store.close()


def test_a_store_not_closed_replays_its_log_at_open(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    store = LmdbStore(path)
    store.apply(objects=[("a", obj(b"1"))])
    store.apply(objects=[("b", obj(b"2")), ("a", obj(b"3"))])
    # As after kill -9: LMDB never saw these writes, only the log did.
    store._wal.close()
    store._env.close()
    store_module._OPEN_PATHS.discard(store._path)
    reopened = LmdbStore(path)
    try:
        assert reopened.get_many(["a", "b"]) == {"a": obj(b"3"), "b": obj(b"2")}
        assert not reopened._memtable and os.path.getsize(Path(path) / "wal.log") == 0    # checkpointed
    finally:
        reopened.close()


def test_a_full_disk_refuses_the_batch_and_the_log_stays_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LmdbStore(str(tmp_path / "db"))
    try:
        store.apply(objects=[("kept", obj(b"1"))])
        size = store._wal.size
        real_pwrite = os.pwrite

        def short_then_full(fd: int, data: bytes, offset: int) -> int:
            if offset == size:
                return real_pwrite(fd, bytes(data[:5]), offset)     # part of the frame, then no room
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "pwrite", short_then_full)
        with pytest.raises(StoreFull, match="nothing of this batch was written"):
            store.apply(objects=[("lost", obj(b"2"))])
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        assert store._wal.size == size == os.path.getsize(tmp_path / "db" / "wal.log")
        assert store.get("lost") is None
        store.apply(objects=[("after", obj(b"3"))])
    finally:
        store.close()
    reopened = LmdbStore(str(tmp_path / "db"))
    try:
        assert reopened.get_many(["kept", "lost", "after"]) == {"kept": obj(b"1"), "lost": None, "after": obj(b"3")}
    finally:
        reopened.close()


def test_logged_writes_that_no_longer_fit_the_map_stay_readable_and_new_writes_are_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    store = LmdbStore(path, map_size=256 << 10)           # the log holds at most 32 KiB
    try:
        with pytest.raises(StoreFull):                   # fill the map through LMDB (hints skip the log)
            for i in range(1000):
                store.apply(objects=[(f"fill{i}", obj(bytes(2000)))], hints=[("n9", f"fill{i}", obj(b""))])
        store.apply(objects=[("logged", obj(b"acknowledged"))])
    finally:
        store.close()                                    # its checkpoint fails: the write stays in the log
    reopened = LmdbStore(path, map_size=256 << 10)
    try:
        assert reopened.get("logged") == obj(b"acknowledged")
        with pytest.raises(StoreFull):
            for i in range(100):
                reopened.apply(objects=[(f"more{i}", obj(bytes(1000)))])
    finally:
        reopened.close()
    roomy = LmdbStore(path, map_size=8 << 20)             # room again: the open checkpoints
    try:
        assert roomy.get("logged") == obj(b"acknowledged") and not roomy._memtable
    finally:
        roomy.close()


def test_count_includes_logged_keys_once_whether_or_not_lmdb_has_them(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "db"))
    try:
        store.apply(objects=[(f"k{i}", obj(b"1")) for i in range(5)])
        store.checkpoint()
        store.apply(objects=[("k0", obj(b"2")), ("new0", obj(b"2"))])     # one overwrite, one new key
        assert store.count() == 6
        store.apply(objects=[("k1", obj(b"3")), ("new1", obj(b"3")), ("new0", obj(b"4"))])
        assert store.count() == 7 == store.count()                         # the remembered part stays right
        store.checkpoint()
        assert store.count() == 7
        store.apply(objects=[("new2", obj(b"5"))])
        assert store.count() == 8
    finally:
        store.close()
