"""Hostile and broken input never takes a node down (issue 21).

Slow handshakes are closed within one overall deadline; connections over a cap are closed
at once; an accept error (EMFILE) never stops the listener; every kind of full disk is
``StoreFull`` in the store and ``StorageFull`` for the client, and writes work again once
there is room; secret files are checked like ssh keys; a client says what is over a limit
before it sends anything.

Tests marked ``cluster`` start node processes (a one-node cluster, or a small transport
process); the rest run in this process.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pykka
import pytest
from click.testing import CliRunner
from fakes import FakeCluster
from waiting import wait_for

from actors import Client, InvalidRequest, LocalCluster
from actors.cli import main as cli_main
from actors.cluster import free_ports
from actors.config import ClusterConfig, ensure_secret, load_secret
from actors.errors import ClusterUnavailable, StorageFull
from actors.limits import MAX_KEY_BYTES, MAX_VALUE_BYTES, check_key, check_value
from actors.membership import Membership
from actors.messages import Hello, Reply, StatusRequest
from actors.replica import ReplicaActor
from actors.transport import MAX_HANDSHAKING, Transport
from actors.wire import (
    HANDSHAKE_TIMEOUT,
    MAGIC,
    NONCE,
    FrameReader,
    client_handshake,
    encode,
    server_handshake,
)
from storage.codec import encode_object
from storage.store import LmdbStore, StoreError, StoreFull
from storage.versions import update
from storage.wal import WriteAheadLog

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"hostile-test-secret"
GREETING = len(MAGIC) + NONCE
CLOSED_AT_ONCE = 2.0
"""How long a connection closed "at once" may take to show as closed (well under HANDSHAKE_TIMEOUT)."""
HELD_AT_MOST = HANDSHAKE_TIMEOUT + 5.0
"""The longest a slow handshake may hold its connection here: the deadline, and slack for a busy machine."""


def obj(value: bytes) -> Any:
    return update(None, (), value, "t")


# --- talking to a node by hand -----------------------------------------------------------------


def closed_without_greeting(sock: socket.socket, within: float = CLOSED_AT_ONCE) -> bool:
    """True if the node closed ``sock`` within ``within`` seconds without sending a byte."""
    sock.settimeout(within)
    try:
        return sock.recv(64) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def trickle(sock: socket.socket, data: bytes, every: float = 1.0, give_up: float = HELD_AT_MOST) -> float | None:
    """Send ``data`` a byte at a time, one every ``every`` seconds (waiting for the close meanwhile), until the
    node closes the connection: the seconds that took, or None if it was still open after ``give_up``."""
    start = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
            sock.settimeout(every)
            if sock.recv(64) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except OSError:
            return time.monotonic() - start
        if time.monotonic() - start > give_up:
            return None
    return None


def served(address: tuple[str, int], secret: bytes = SECRET, timeout: float = 5.0) -> bool:
    """Authenticate, say hello, ask for a status: True if the answer came."""
    with socket.create_connection(address, timeout=timeout) as sock:
        client_handshake(sock, secret)
        sock.settimeout(timeout)
        sock.sendall(encode(Hello("client")) + encode(StatusRequest(1)))
        reader = FrameReader()
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return False
            for message in reader.feed(data):
                if isinstance(message, Reply) and message.req_id == 1:
                    return bool(message.ok)


def served_eventually(address: tuple[str, int], within: float = 5.0) -> float:
    """Seconds until ``served`` first succeeds (bounded by ``within``)."""
    start = time.monotonic()

    def once() -> bool:
        try:
            return served(address, timeout=1.0)
        except Exception:  # noqa: BLE001 - refused while the node is still busy: try again
            return False

    wait_for(once, timeout=within, interval=0.02, what=f"a client served at {address}")
    return time.monotonic() - start


def answer_status(messages: list[Any], conn: Any) -> None:
    """The ``deliver`` of a bare transport: answers a client's ``StatusRequest``."""
    for message in messages:
        if isinstance(message, StatusRequest) and conn is not None:
            conn.send(Reply(message.req_id, True, "served"))


@pytest.fixture
def make_transport() -> Iterator[Callable[..., Transport]]:
    """Start bare transports in this process (listening on 127.0.0.1); all are stopped afterwards."""
    started: list[Transport] = []

    def make(**caps: int) -> Transport:
        transport = Transport("hostile", SECRET, {}, answer_status, **caps)
        started.append(transport)
        transport.listen("127.0.0.1", 0)
        return transport

    try:
        yield make
    finally:
        for transport in started:
            transport.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A one-node cluster for the tests that attack a real node process."""
    with LocalCluster(nodes=1, n=1, r=1, w=1, data_dir=tmp_path_factory.mktemp("hostile")) as cluster:
        yield cluster


def still_serves(cluster: LocalCluster) -> None:
    with cluster.client(nodes=["n1"]) as client:
        client.put("alive", b"yes", context=client.get("alive").context)
        assert client.get("alive").values == [b"yes"]


def node_log(cluster: LocalCluster) -> str:
    return (cluster.data_dir / "n1" / "node.log").read_text(errors="replace")


# --- 1. one deadline for the whole handshake ------------------------------------------------


@pytest.mark.cluster
def test_a_handshake_trickled_a_byte_a_second_is_closed_within_the_deadline(node: LocalCluster) -> None:
    with socket.create_connection(node.addresses["n1"], timeout=5) as sock:
        sock.settimeout(5)
        assert len(sock.recv(GREETING, socket.MSG_WAITALL)) == GREETING
        held = trickle(sock, os.urandom(64))            # the 64-byte answer: 64 s at this pace
    assert held is not None, f"a trickling handshake was still open after {HELD_AT_MOST:.0f}s"
    assert held < HELD_AT_MOST
    print(f"trickling handshake held for {held:.2f}s")
    wait_for(lambda: "handshake not done within" in node_log(node), timeout=5, what="the timeout logged")
    still_serves(node)


@pytest.mark.cluster
def test_a_client_that_authenticates_then_trickles_its_hello_is_closed_within_the_deadline(
        node: LocalCluster) -> None:
    with socket.create_connection(node.addresses["n1"], timeout=5) as sock:
        client_handshake(sock, node.secret)
        held = trickle(sock, encode(Hello("client")))   # a 60-byte frame, a byte a second
    assert held is not None, f"a trickled hello was still open after {HELD_AT_MOST:.0f}s"
    print(f"trickled hello held for {held:.2f}s after the handshake")
    still_serves(node)


# --- 2. caps ------------------------------------------------------------------------------------


@pytest.mark.cluster
def test_connections_over_the_handshaking_cap_are_closed_at_once_and_good_clients_are_served_after(
        node: LocalCluster) -> None:
    address = node.addresses["n1"]
    idle: list[socket.socket] = []
    extra: list[socket.socket] = []
    try:
        for _ in range(MAX_HANDSHAKING):                 # each holds a handshake slot (the node greeted it)
            sock = socket.create_connection(address, timeout=5)
            idle.append(sock)
            assert len(sock.recv(GREETING, socket.MSG_WAITALL)) == GREETING
        for _ in range(8):
            extra.append(socket.create_connection(address, timeout=5))
        assert all(closed_without_greeting(sock) for sock in extra), "a connection over the cap was not closed"
    finally:
        for sock in idle + extra:
            sock.close()
    wait_for(lambda: _still_serves_quietly(node), timeout=10, what="a good client served once the flood is gone")
    wait_for(lambda: "closed a new connection" in node_log(node), timeout=5, what="the shed connections logged")


def _still_serves_quietly(cluster: LocalCluster) -> bool:
    try:
        still_serves(cluster)
    except Exception:  # noqa: BLE001 - not yet: the node is still freeing the flood's slots
        return False
    return True


def test_connections_over_the_connection_cap_are_closed_at_once(make_transport: Callable[..., Transport]) -> None:
    transport = make_transport(max_connections=3)
    address = transport.address
    assert address is not None
    held: list[socket.socket] = []
    try:
        for _ in range(3):
            sock = socket.create_connection(address, timeout=5)
            held.append(sock)
            client_handshake(sock, SECRET)
            sock.sendall(encode(Hello("client")))
        wait_for(lambda: len(transport._connections) == 3, timeout=5, what="three connections open")
        with socket.create_connection(address, timeout=5) as over:
            assert closed_without_greeting(over)
        assert transport.shed >= 1
        held.pop().close()
        served_eventually(address)
    finally:
        for sock in held:
            sock.close()


def test_a_hello_frame_longer_than_a_hello_is_refused_before_it_is_read(
        make_transport: Callable[..., Transport]) -> None:
    transport = make_transport()
    assert transport.address is not None
    with socket.create_connection(transport.address, timeout=5) as sock:
        client_handshake(sock, SECRET)
        sock.sendall((64 << 20).to_bytes(4, "big"))        # claims a 64 MiB first frame
        sock.settimeout(CLOSED_AT_ONCE)
        assert sock.recv(64) == b""
    assert transport.refused == 1


# --- 3. a listener that survives ----------------------------------------------------------------


def test_an_accept_that_fails_with_emfile_once_does_not_stop_the_listener(
        make_transport: Callable[..., Transport], monkeypatch: pytest.MonkeyPatch) -> None:
    real_accept = socket.socket.accept
    failed = threading.Event()

    def accept_out_of_descriptors_once(self: socket.socket) -> tuple[socket.socket, Any]:
        if threading.current_thread().name == "accept-hostile" and not failed.is_set():
            select.select([self], [], [], 10.0)            # a connection is pending: then the process runs out
            failed.set()
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_accept(self)

    monkeypatch.setattr(socket.socket, "accept", accept_out_of_descriptors_once)
    transport = make_transport()
    assert transport.address is not None
    with socket.create_connection(transport.address, timeout=5) as pending:
        assert failed.wait(5), "accept was never called"
        client_handshake(pending, SECRET)                  # descriptors are back: the pending one is served
    took = served_eventually(transport.address)
    print(f"a new client served {took * 1000:.0f} ms after an EMFILE from accept")


def test_a_node_raises_its_soft_descriptor_limit_to_the_hard_one(tmp_path: Path) -> None:
    script = ("import resource\n"
              "from actors.node import raise_descriptor_limit\n"
              "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))\n"
              "print(raise_descriptor_limit() == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0] "
              "or hard == resource.RLIM_INFINITY)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "True", done.stderr


_FD_FLOOD_NODE = """
import logging, os, resource, sys
from actors.messages import Reply, StatusRequest
from actors.transport import Transport

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(128, soft), hard))

def deliver(messages, conn):
    for message in messages:
        if isinstance(message, StatusRequest) and conn is not None:
            conn.send(Reply(message.req_id, True, "served"))

transport = Transport("flooded", bytes.fromhex(sys.argv[1]), {}, deliver)
print(transport.listen("127.0.0.1", 0)[1], flush=True)
hogged = []
for line in sys.stdin:
    if line.strip() == "hog":                 # take every descriptor left, as a flood (or a leak) would
        try:
            while True:
                hogged.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            print("hogged", len(hogged), exc.errno, flush=True)
    elif line.strip() == "release":
        for fd in hogged:
            os.close(fd)
        hogged.clear()
        print("released", flush=True)
transport.stop()
"""


@pytest.mark.cluster
def test_a_node_out_of_descriptors_sheds_connections_and_serves_again_once_they_are_back(tmp_path: Path) -> None:
    stderr = (tmp_path / "node.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", _FD_FLOOD_NODE, SECRET.hex()], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None and proc.stdin is not None
        address = ("127.0.0.1", int(proc.stdout.readline()))
        assert served(address)

        proc.stdin.write("hog\n")
        proc.stdin.flush()
        hogged = proc.stdout.readline().split()
        assert hogged[0] == "hogged" and int(hogged[2]) == errno.EMFILE, hogged
        flood: list[socket.socket] = []
        try:
            answers = []
            for _ in range(20):                           # greeted (an accept under way held a descriptor) or
                sock = socket.create_connection(address, timeout=5)      # shed at once: none left hanging
                flood.append(sock)
                sock.settimeout(CLOSED_AT_ONCE)
                try:
                    answers.append("greeted" if sock.recv(GREETING) else "shed")
                except (ConnectionResetError, BrokenPipeError):
                    answers.append("shed")
                except TimeoutError:
                    answers.append("hanging")
            assert "hanging" not in answers and answers.count("shed") >= 18, answers
        finally:
            for sock in flood:
                sock.close()

        proc.stdin.write("release\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
        took = served_eventually(address)
        print(f"served {took * 1000:.0f} ms after the descriptor flood ended")
        assert took < 1.0
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        stderr.close()
    assert "out of descriptors" in (tmp_path / "node.log").read_text()


# --- 4. every full disk is StoreFull -------------------------------------------------------------


class _FailingCommit:
    """A write transaction whose commit fails with ``error`` (nothing of it written, as LMDB does)."""

    def __init__(self, txn: lmdb.Transaction, error: BaseException) -> None:
        self._txn = txn
        self._error = error

    def __enter__(self) -> lmdb.Transaction:
        return self._txn

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        self._txn.abort()
        if exc_type is None:
            raise self._error
        return False


class NoRoom:
    """Stands for a store's LMDB environment on a full disk: every write transaction fails at commit
    with ``error`` until ``room()``."""

    def __init__(self, store: LmdbStore, error: BaseException) -> None:
        self.store = store
        self.env = store._env
        self.error: BaseException | None = error
        store._env = self                               # type: ignore[assignment]

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        txn = self.env.begin(*args, **kwargs)
        if kwargs.get("write") and self.error is not None:
            return _FailingCommit(txn, self.error)
        return txn

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def room(self) -> None:
        """Space is back."""
        self.error = None
        self.store._env = self.env


def _quota_error() -> lmdb.Error:
    error = lmdb.Error("mdb_txn_commit: Disk quota exceeded")
    error.code = errno.EDQUOT
    return error


NO_ROOM_ERRORS = [
    pytest.param(lambda: lmdb.DiskError("mdb_txn_commit: No space left on device"), id="lmdb-DiskError-ENOSPC"),
    pytest.param(_quota_error, id="lmdb-Error-EDQUOT"),
    pytest.param(lambda: OSError(errno.ENOSPC, "No space left on device"), id="OSError-ENOSPC"),
]


@pytest.mark.parametrize("error", NO_ROOM_ERRORS)
def test_an_lmdb_commit_without_room_is_store_full_for_hints_metadata_and_checkpoints(
        tmp_path: Path, error: Callable[[], BaseException]) -> None:
    store = LmdbStore(str(tmp_path / "db"))
    try:
        store.apply(objects=[("logged", obj(b"acknowledged"))])     # in the log, not yet in LMDB
        disk = NoRoom(store, error())
        with pytest.raises(StoreFull):
            store.meta_put("ring", b"{}")
        with pytest.raises(StoreFull):
            store.apply(objects=[("hinted", obj(b"h"))], hints=[("n9", "hinted", obj(b"h"))])
        with pytest.raises(StoreFull):
            store.checkpoint()
        with pytest.raises(StoreFull):
            store.delete_hints([b"n9\x00" + bytes(8)])
        assert store.get("logged") == obj(b"acknowledged")            # reads go on
        assert store.meta_get("ring") is None and store.hint_count() == 0
        disk.room()
        store.meta_put("ring", b"{}")
        store.apply(objects=[("hinted", obj(b"h"))], hints=[("n9", "hinted", obj(b"h"))])
        assert store.meta_get("ring") == b"{}" and store.hint_count() == 1
        assert store.get_many(["logged", "hinted"]) == {"logged": obj(b"acknowledged"), "hinted": obj(b"h")}
    finally:
        store.close()


def test_an_eio_from_a_commit_is_a_store_error_that_says_so(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "db"))
    try:
        error = lmdb.Error("mdb_txn_commit: Input/output error")
        error.code = errno.EIO
        NoRoom(store, error)
        with pytest.raises(StoreError, match="disk I/O error") as raised:
            store.meta_put("ring", b"{}")
        assert not isinstance(raised.value, StoreFull)
    finally:
        store.close()


def test_a_checkpoint_without_room_keeps_the_log_and_the_memtable_and_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = LmdbStore(str(path))
    try:
        store._wal_limit = 2000                        # a checkpoint every couple of writes
        store.apply(objects=[("a", obj(b"1" * 600))])
        logged, log_bytes = dict(store._memtable), store._wal.size
        disk = NoRoom(store, lmdb.DiskError("mdb_txn_commit: No space left on device"))
        with pytest.raises(StoreFull):
            store.checkpoint()
        assert store._memtable == logged and store._wal.size == log_bytes    # nothing lost, nothing moved
        with pytest.raises(StoreFull):                 # a write that needs a checkpoint first: refused
            for i in range(5):
                store.apply(objects=[(f"more{i}", obj(b"2" * 600))])
        refused_at = i
        assert store.get("a") == obj(b"1" * 600)
        assert dict(store.items()) == {"a": obj(b"1" * 600), **{f"more{j}": obj(b"2" * 600)
                                                               for j in range(refused_at)}}   # scans go on
        assert store.count() == 1 + refused_at
        disk.room()
        store.apply(objects=[(f"more{refused_at}", obj(b"2" * 600))])   # the retried checkpoint makes room
        assert store._checkpoints >= 1
        store.checkpoint()
        assert not store._memtable and store._wal.size == 0
    finally:
        store.close()
    reopened = LmdbStore(str(path))
    try:
        assert reopened.count() == 2 + refused_at and reopened.get("a") == obj(b"1" * 600)
    finally:
        reopened.close()


def _replayed(wal_path: Path, scratch: Path) -> list[list[bytes]]:
    """The keys of every batch a restart would replay from ``wal_path`` (read from a copy)."""
    shutil.copyfile(wal_path, scratch)
    copy = WriteAheadLog(str(scratch))
    try:
        return [[key for key, _ in batch] for batch in copy.replay()]
    finally:
        copy.close()


def test_a_refused_log_append_whose_cut_failed_leaves_nothing_a_restart_would_replay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LmdbStore(str(tmp_path / "db"))
    wal_path = tmp_path / "db" / "wal.log"
    try:
        store.apply(objects=[("kept", obj(b"1"))])
        after = obj(b"3" * 40)
        after_frame = 8 + 6 + len(b"after") + len(encode_object(after))
        planted = encode_object(obj(b"planted"))
        entry = (4).to_bytes(2, "big") + len(planted).to_bytes(4, "big") + b"evil" + planted
        evil_frame = len(entry).to_bytes(4, "big") + zlib.crc32(entry).to_bytes(4, "big") + entry
        for pad in range(200):                         # a value holding a whole frame where "after" will end
            value = b"p" * pad + evil_frame + b"q" * 16
            if 8 + 6 + len(b"lost") + encode_object(obj(value)).find(evil_frame) == after_frame:
                break
        else:
            pytest.fail("cannot align the planted frame")

        real_fdatasync, real_ftruncate = os.fdatasync, os.ftruncate

        def no_room(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def cannot_cut(fd: int, length: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", no_room)
        monkeypatch.setattr(os, "ftruncate", cannot_cut)
        with pytest.raises(StoreFull):
            store.apply(objects=[("lost", obj(value))])
        monkeypatch.setattr(os, "fdatasync", real_fdatasync)
        monkeypatch.setattr(os, "ftruncate", real_ftruncate)

        store.apply(objects=[("after", after)])        # space is back: the next append works
        assert store.get("lost") is None and store.get("after") == after
        assert _replayed(wal_path, tmp_path / "copy.log") == [[b"kept"], [b"after"]]
    finally:
        store.close()


def test_a_log_reset_whose_sync_failed_does_not_lose_the_writes_logged_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LmdbStore(str(tmp_path / "db"))
    wal_path = tmp_path / "db" / "wal.log"
    try:
        key = next(k for k in (f"k{'x' * i}" for i in range(8))
                   if (8 + 6 + len(k) + len(encode_object(obj(b"1")))) % 8)   # a log size not a multiple of 8
        store.apply(objects=[(key, obj(b"1"))])
        real_fsync = os.fsync

        def sync_fails_once(fd: int) -> None:
            monkeypatch.setattr(os, "fsync", real_fsync)
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fsync", sync_fails_once)
        with pytest.raises(StoreError):
            store.checkpoint()                          # in LMDB; the log cut but not synced
        store.apply(objects=[("after", obj(b"acknowledged"))])
        assert _replayed(wal_path, tmp_path / "copy.log")[-1:] == [[b"after"]]
    finally:
        store.close()


def test_a_replica_whose_disk_is_full_makes_the_client_see_storage_full_and_writes_work_once_there_is_room(
        tmp_path: Path) -> None:
    cluster = FakeCluster(("n1", "n2", "n3"))
    stores: dict[str, LmdbStore] = {}
    try:
        for name in cluster.nodes:                      # real stores (commits straight to LMDB), not fakes
            cluster.net.replicas[name].stop()
            stores[name] = LmdbStore(str(tmp_path / name), map_size=64 << 20, wal=False)
            view = Membership(name, cluster.ring)
            view.publish({other: "up" for other in cluster.nodes})
            cluster.net.replicas[name] = ReplicaActor.start(
                name=name, store=stores[name], send=cluster.net.sender(name), stats=cluster.replica_stats[name],
                membership=view, clock=cluster.clock, wall=cluster.clock)
        first = cluster.key_led_by("n1", "first")
        cluster.put(first, b"acknowledged", w=3).ok()

        disks = {name: NoRoom(stores[name], lmdb.DiskError("mdb_txn_commit: No space left on device"))
                 for name in ("n2", "n3")}
        key = cluster.key_led_by("n1", "refused")
        error = cluster.put(key, b"no room", w=2).failure()
        assert isinstance(error, StorageFull), repr(error)
        assert cluster.get(first, r=2).ok().values == [b"acknowledged"]      # reads go on

        for disk in disks.values():
            disk.room()
        seen = cluster.get(key, r=3).ok()               # a refused write may still be on n1: indeterminate
        assert seen.values in ([], [b"no room"])
        cluster.put(key, b"room again", context=seen.context, w=3).ok()
        assert cluster.get(key, r=3).ok().values == [b"room again"]
        assert cluster.get(first, r=3).ok().values == [b"acknowledged"]
    finally:
        pykka.ActorRegistry.stop_all()
        for store in stores.values():
            store.close()


# --- 5. secrets -----------------------------------------------------------------------------------


def write_secret(data_dir: Path, data: bytes, mode: int = 0o600) -> Path:
    path = data_dir / "secret"
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("data", [b"", b"\n", b" \t\r\n"], ids=["empty", "newline", "whitespace"])
def test_an_empty_secret_is_refused_naming_the_file(tmp_path: Path, data: bytes) -> None:
    path = write_secret(tmp_path, data)
    with pytest.raises(ClusterUnavailable, match="empty") as raised:
        load_secret(tmp_path)
    assert str(path) in str(raised.value)


def test_a_secret_of_random_bytes_is_used_as_it_is(tmp_path: Path) -> None:
    secret = b"\xff\x00" + bytes(range(256)) + os.urandom(64) + b"\x80\xfe"
    write_secret(tmp_path, b"\n" + secret + b"\r\n")
    assert load_secret(tmp_path) == secret
    a, b = socket.socketpair()
    with a, b:
        thread = threading.Thread(target=server_handshake, args=(b, secret))
        thread.start()
        client_handshake(a, load_secret(tmp_path))
        thread.join(5)


@pytest.mark.parametrize("holds", ["cluster.json", "n1/store"])
def test_no_new_secret_is_made_for_a_data_dir_that_holds_a_cluster(tmp_path: Path, holds: str) -> None:
    if holds == "cluster.json":
        ClusterConfig(nodes={"n1": ("127.0.0.1", 1)}, n=1, r=1, w=1).save(tmp_path)
    else:
        (tmp_path / holds).mkdir(parents=True)
    with pytest.raises(ClusterUnavailable, match="copy the cluster's secret there"):
        ensure_secret(tmp_path)
    assert not (tmp_path / "secret").exists()
    if holds == "cluster.json":
        with pytest.raises(ClusterUnavailable, match="copy the cluster's secret there"):
            LocalCluster(nodes=1, n=1, r=1, w=1, data_dir=tmp_path)
        assert not (tmp_path / "secret").exists()


def test_a_new_data_dir_gets_a_secret_only_its_owner_can_read(tmp_path: Path) -> None:
    secret = ensure_secret(tmp_path / "new")
    assert len(secret) == 64 and stat.S_IMODE(os.stat(tmp_path / "new" / "secret").st_mode) == 0o600
    assert ensure_secret(tmp_path / "new") == secret


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602], ids=lambda mode: f"{mode:04o}")
def test_a_secret_open_to_others_is_refused_with_the_chmod_that_fixes_it(tmp_path: Path, mode: int) -> None:
    path = write_secret(tmp_path, b"s3cret", mode)
    with pytest.raises(ClusterUnavailable, match=f"chmod 600 {path}"):
        load_secret(tmp_path)
    path.chmod(0o600)
    assert load_secret(tmp_path) == b"s3cret"


def test_the_command_line_says_what_is_wrong_with_the_secret_in_one_line(tmp_path: Path) -> None:
    ClusterConfig(nodes={"n1": ("127.0.0.1", 1)}, n=1, r=1, w=1).save(tmp_path)
    path = write_secret(tmp_path, b"s3cret", 0o644)
    result = CliRunner().invoke(cli_main, ["get", "k", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.strip() == (f"error: the cluster secret {path} is open to others (mode 0644): "
                                     f"run `chmod 600 {path}`")


@pytest.mark.cluster
def test_a_node_refuses_to_start_with_a_bad_secret_in_one_line(tmp_path: Path) -> None:
    ClusterConfig(nodes={"n1": ("127.0.0.1", free_ports(1)[0])}, n=1, r=1, w=1).save(tmp_path)
    write_secret(tmp_path, b"")
    done = subprocess.run([sys.executable, "-m", "actors.node", "--data-dir", str(tmp_path), "--name", "n1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "is empty" in done.stderr


# --- 6. limits said up front -------------------------------------------------------------------


@pytest.fixture
def silent_node() -> Iterator[socket.socket]:
    """A port that listens but never accepts: any request sent would leave a connection pending there."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield server
    finally:
        server.close()


def nothing_connected(server: socket.socket) -> bool:
    readable, _, _ = select.select([server], [], [], 0)
    return not readable


@pytest.mark.parametrize("call, match", [
    pytest.param(lambda c: c.put("k" * (MAX_KEY_BYTES + 1), b"v"), "MAX_KEY_BYTES=511", id="put-long-key"),
    pytest.param(lambda c: c.get("é" * 256), "MAX_KEY_BYTES=511", id="get-long-utf8-key"),
    pytest.param(lambda c: c.delete("k" * 600), "MAX_KEY_BYTES=511", id="delete-long-key"),
    pytest.param(lambda c: c.put("k" * 411, b"v", bucket="b" * 100), "bucket name and key together are 512 bytes",
                 id="put-bucket-and-key"),
    pytest.param(lambda c: c.get_async("k" * 506, bucket="carts"), "bucket name and key together are 512",
                 id="get-bucket-and-key"),
    pytest.param(lambda c: c.put("k", bytes(17 << 20)), f"MAX_VALUE_BYTES={16 << 20}", id="put-17MiB"),
    pytest.param(lambda c: c.put_async("k", memoryview(bytes(MAX_VALUE_BYTES + 1))), "MAX_VALUE_BYTES",
                 id="put-async-memoryview"),
])
def test_a_request_over_a_limit_is_refused_by_the_client_before_anything_is_sent(
        silent_node: socket.socket, call: Callable[[Client], Any], match: str) -> None:
    with Client({"n1": silent_node.getsockname()}, SECRET) as client, pytest.raises(InvalidRequest, match=match):
        call(client)
    assert nothing_connected(silent_node), "the client connected before refusing"


def test_the_limits_admit_what_is_exactly_at_them() -> None:
    check_key("", "k" * MAX_KEY_BYTES)
    check_key("b", "k" * (MAX_KEY_BYTES - 2))
    check_value(bytes(MAX_VALUE_BYTES))
    check_value(None)
    with pytest.raises(InvalidRequest, match="NUL"):
        check_key("", "a\x00b")
    with pytest.raises(InvalidRequest, match="non-empty"):
        check_key("", "")
