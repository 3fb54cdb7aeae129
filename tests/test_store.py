"""The store contract, run against both backends, then LMDB's durability and limits."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.store import LmdbStore, MemoryStore, Store, StoreError, StoreFull, open_store
from storage.versions import DVVSet, update

REPO = Path(__file__).resolve().parents[1]


def obj(value: object, actor: str = "a") -> DVVSet:
    return update(None, (), value, actor)


@pytest.fixture(params=["lmdb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened = LmdbStore(str(tmp_path / "db"), map_size=64 << 20) if request.param == "lmdb" else MemoryStore()
    try:
        yield opened
    finally:
        opened.close()


# --- the contract ---------------------------------------------------------------------


def test_both_backends_implement_the_store_protocol(store: Store) -> None:
    assert isinstance(store, Store)


def test_a_missing_key_reads_as_none(store: Store) -> None:
    assert store.get("nothing") is None
    assert store.get_many(["nothing"]) == {"nothing": None}


def test_a_batch_is_read_back_whole(store: Store) -> None:
    store.apply(objects=[("k1", obj(b"1")), ("k2", obj(None)), ("ключ", obj("t"))])
    assert store.get("k1") == obj(b"1")
    assert store.get_many(["k2", "ключ", "k3"]) == {"k2": obj(None), "ключ": obj("t"), "k3": None}
    assert store.count() == 3


def test_a_later_put_replaces_the_stored_object(store: Store) -> None:
    store.apply(objects=[("k", obj(b"old"))])
    store.apply(objects=[("k", obj(b"new", "b"))])
    assert store.get("k") == obj(b"new", "b")
    assert store.count() == 1


def test_deletes_run_after_the_batchs_puts_and_ignore_missing_keys(store: Store) -> None:
    store.apply(objects=[("gone", obj(b"x")), ("kept", obj(b"y"))])
    store.apply(objects=[("brief", obj(b"z"))], deletes=["gone", "brief", "never-there"])
    assert list(store.keys()) == ["kept"]


def test_items_are_sorted_by_key_from_an_inclusive_start(store: Store) -> None:
    names = [f"k{i:04d}" for i in range(700)]  # more than one LMDB read chunk
    store.apply(objects=[(name, obj(name)) for name in reversed(names)])
    assert [key for key, _ in store.items()] == names
    assert [key for key, _ in store.items("k0300")] == names[300:]
    assert [key for key, _ in store.items("k0300x")] == names[301:]
    assert dict(store.items("k0699")) == {"k0699": obj("k0699")}
    assert list(store.keys()) == names
    assert store.count() == 700


def test_items_keeps_going_while_writes_continue(store: Store) -> None:
    store.apply(objects=[(f"k{i:04d}", obj(i)) for i in range(0, 1000, 2)])
    seen = []
    for n, (key, _) in enumerate(store.items()):
        seen.append(key)
        if n % 100 == 0:
            store.apply(objects=[(f"k{n + 1:04d}", obj(n))], deletes=[f"k{n + 500:04d}"])
    assert seen == sorted(set(seen))
    assert {"k0000", "k0998"} <= set(seen)


def test_hints_are_listed_oldest_first_per_target_and_overall(store: Store) -> None:
    store.apply(hints=[("n2", "k1", obj(1)), ("n1", "k2", obj(2))])
    store.apply(objects=[("k", obj(0))], hints=[("n2", "k3", obj(3)), ("n10", "k4", obj(4))])
    assert [h.key for h in store.hints()] == ["k1", "k2", "k3", "k4"]
    assert [h.key for h in store.hints(limit=2)] == ["k1", "k2"]
    assert [h.key for h in store.hints("n2")] == ["k1", "k3"]
    assert [h.key for h in store.hints("n2", limit=1)] == ["k1"]
    assert [h.key for h in store.hints("n1")] == ["k2"]
    assert store.hints("n3") == []
    assert store.hint_count() == 4


def test_a_hint_carries_its_target_key_object_and_creation_time(store: Store) -> None:
    before = time.time()
    store.apply(hints=[("node-b", "cart", obj(b"v"))])
    (hint,) = store.hints()
    assert (hint.target, hint.key, hint.obj) == ("node-b", "cart", obj(b"v"))
    assert before <= hint.created <= time.time()
    assert isinstance(hint.hint_id, bytes)


def test_hint_ids_are_unique_and_ordered_within_a_target(store: Store) -> None:
    store.apply(hints=[("n", f"k{i}", obj(i)) for i in range(50)])
    ids = [h.hint_id for h in store.hints("n")]
    assert len(set(ids)) == 50 and ids == sorted(ids)
    assert [h.key for h in store.hints("n")] == [f"k{i}" for i in range(50)]


def test_deleted_hints_are_gone_and_unknown_ids_are_ignored(store: Store) -> None:
    store.apply(hints=[("n1", "k1", obj(1)), ("n1", "k2", obj(2)), ("n2", "k3", obj(3))])
    store.delete_hints([h.hint_id for h in store.hints("n1")] + [b"n9\x00unknown"])
    assert [h.key for h in store.hints()] == ["k3"]
    assert store.hint_count() == 1


def test_metadata_is_stored_by_name(store: Store) -> None:
    assert store.meta_get("actor_id") is None
    store.meta_put("actor_id", b"node-a:1")
    store.meta_put("actor_id", b"node-a:2")
    assert store.meta_get("actor_id") == b"node-a:2"


def test_paxos_states_are_set_with_a_batch_and_read_back_by_key(store: Store) -> None:
    assert store.paxos_get("k") is None
    store.apply(objects=[("k", obj(b"v"))], paxos=[("k", b"state-1"), ("other", b"s")])
    assert store.paxos_get("k") == b"state-1" and store.get("k") == obj(b"v")
    store.apply(paxos=[("k", b"state-2")])
    assert (store.paxos_get("k"), store.paxos_get("other")) == (b"state-2", b"s")


@pytest.mark.parametrize("bad_key", ["", "x" * 512, "é" * 256])
def test_a_batch_with_a_bad_key_is_refused_whole(store: Store, bad_key: str) -> None:
    with pytest.raises(ValueError, match="utf-8 bytes"):
        store.apply(objects=[("good", obj(1)), (bad_key, obj(2))])
    assert store.count() == 0


def test_close_is_idempotent_and_later_use_is_a_store_error(store: Store) -> None:
    store.close()
    store.close()
    with pytest.raises(StoreError):
        store.get("k")
    with pytest.raises(StoreError):
        store.apply(objects=[("k", obj(1))])


def test_a_reader_reads_one_snapshot_for_its_whole_block(store: Store) -> None:
    store.apply(objects=[("a", obj(b"1")), ("b", obj(b"2"))])
    with store.reader() as get:
        assert get("a") == obj(b"1")
        store.apply(objects=[("a", obj(b"changed")), ("c", obj(b"3"))], deletes=["b"])
        assert (get("a"), get("b"), get("c"), get("never")) == (obj(b"1"), obj(b"2"), None, None)
        with pytest.raises(ValueError, match="utf-8 bytes"):
            get("")
    with store.reader() as get:
        assert (get("a"), get("b"), get("c")) == (obj(b"changed"), None, obj(b"3"))
    assert store.get_many(["a", "b", "c"]) == {"a": obj(b"changed"), "b": None, "c": obj(b"3")}
    store.close()
    with pytest.raises(StoreError), store.reader():
        pass


def test_a_key_put_twice_in_one_batch_keeps_the_later_object(store: Store) -> None:
    store.apply(objects=[("k", obj(b"first")), ("other", obj(b"x")), ("k", obj(b"second", "b"))])
    assert store.get("k") == obj(b"second", "b")
    assert store.count() == 2


def test_crdt_records_and_siblings_sit_side_by_side(store: Store) -> None:
    from storage.crdts import apply as crdt_apply
    from storage.hlc import Timestamp

    register = crdt_apply(None, "register", ("assign", b"v"), "a", None, Timestamp(1, 0, "n1"))
    counter = crdt_apply(None, "counter", ("increment", 2), "a", "op", Timestamp(1, 0, "n1"))
    store.apply(objects=[("lww", register), ("count", counter), ("sib", obj(b"s"))])
    assert store.get_many(["lww", "count", "sib"]) == {"lww": register, "count": counter, "sib": obj(b"s")}
    with store.reader() as get:
        assert [get(k) for k in ("lww", "count", "sib")] == [register, counter, obj(b"s")]


def test_one_writer_and_several_readers_run_concurrently(store: Store) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for batch in range(40):
                store.apply(objects=[(f"k{batch:03d}-{i}", obj(i)) for i in range(20)])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    def read() -> None:
        try:
            while not done.is_set():
                assert store.count() % 20 == 0
                assert store.get("k000-0") in (None, obj(0))
                with store.reader() as get:
                    assert get("k000-0") in (None, obj(0))
                assert all(isinstance(o, DVVSet) for _, o in store.items())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert store.count() == 800


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    memory, disk = open_store(None), open_store(str(tmp_path / "db"), map_size=1 << 20, sync=False)
    try:
        assert isinstance(memory, MemoryStore) and isinstance(disk, LmdbStore)
    finally:
        memory.close()
        disk.close()


# --- LMDB only ---------------------------------------------------------------------------


def test_lmdb_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "data" / "node-a" / "store")  # missing parents are created
    store = LmdbStore(path)
    store.apply(objects=[("k", obj(b"v"))], hints=[("n2", "k", obj(b"v"))])
    store.meta_put("incarnation", b"3")
    store.close()
    store = LmdbStore(path)
    try:
        assert store.get("k") == obj(b"v")
        assert [(h.target, h.key, h.obj) for h in store.hints()] == [("n2", "k", obj(b"v"))]
        assert store.meta_get("incarnation") == b"3"
    finally:
        store.close()


def test_lmdb_paxos_states_survive_close_and_reopen(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "db"))
    store.apply(paxos=[("k", b"promised (5, n2)")])
    store.close()
    again = LmdbStore(str(tmp_path / "db"))
    try:
        assert again.paxos_get("k") == b"promised (5, n2)"
    finally:
        again.close()


def test_lmdb_refuses_to_open_one_environment_twice_in_a_process(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "db"))
    try:
        with pytest.raises(StoreError, match="already open"):
            LmdbStore(str(tmp_path / "db"))
    finally:
        store.close()
    LmdbStore(str(tmp_path / "db")).close()


def test_a_full_lmdb_map_refuses_the_batch_and_keeps_what_was_stored(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "db"), map_size=64 << 10)
    try:
        store.apply(objects=[(f"small{i}", obj(i)) for i in range(5)], hints=[("n", "small0", obj(0))])
        with pytest.raises(StoreFull, match="is full: nothing of this batch was written"):
            store.apply(objects=[(f"big{i}", obj(bytes(4096))) for i in range(100)])
        assert store.count() == 5
        assert store.get_many([f"small{i}" for i in range(5)]) == {f"small{i}": obj(i) for i in range(5)}
        assert store.get("big0") is None and store.hint_count() == 1
        store.apply(objects=[("after", obj(b"ok"))])
        assert store.get("after") == obj(b"ok")
    finally:
        store.close()


CHILD = """
import sys
from storage.store import LmdbStore
from storage.versions import update
store = LmdbStore(sys.argv[1], map_size=256 << 20)
batch = 0
while True:
    store.apply([(f"b{batch:06d}-{i:02d}", update(None, (), bytes([batch % 256]) * 200, "child")) for i in range(50)])
    batch += 1
    print(batch, flush=True)
"""


def _read_reports(proc: subprocess.Popen[bytes], wanted: int, timeout: float) -> bytes:
    """The child's output once it has reported `wanted` committed batches."""
    assert proc.stdout is not None
    deadline, seen = time.monotonic() + timeout, b""
    while seen.count(b"\n") < wanted:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the child reported only {len(seen.splitlines())} batches in {timeout} s"
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, "the child exited before it was killed"
            seen += chunk
    return seen


@pytest.mark.parametrize("wanted", [20, 700])      # 700 batches of 50 keys: past two checkpoints of the log
def test_a_writer_killed_with_sigkill_loses_no_batch_it_reported_committed(tmp_path: Path, wanted: int) -> None:
    path = str(tmp_path / "db")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, path], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    output = b""
    try:
        output = _read_reports(proc, wanted=wanted, timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        rest, errors = proc.communicate(timeout=10)  # drains the pipes and reaps the child
    assert proc.returncode == -signal.SIGKILL, errors.decode(errors="replace")
    reported = int((output + rest).split()[-1])
    assert reported >= wanted
    store = LmdbStore(path)
    try:
        committed = store.count() // 50
        assert store.count() % 50 == 0 and committed >= reported
        for batch in range(committed):
            expected = update(None, (), bytes([batch % 256]) * 200, "child")
            keys = [f"b{batch:06d}-{i:02d}" for i in range(50)]
            assert store.get_many(keys) == dict.fromkeys(keys, expected)
    finally:
        store.close()


# --- the package ---------------------------------------------------------------------------


def test_the_storage_package_reexports_a_sorted_public_api_without_importing_actors() -> None:
    code = (
        "import sys, storage, storage.codec, storage.store, storage.versions\n"
        "for module in (storage, storage.codec, storage.store, storage.versions):\n"
        "    assert module.__all__ == sorted(module.__all__), module.__name__\n"
        "    assert all(hasattr(storage, name) for name in module.__all__), module.__name__\n"
        "assert not any(name == 'actors' or name.startswith('actors.') for name in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=30)
