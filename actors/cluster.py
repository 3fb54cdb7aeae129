"""LocalCluster: node processes on this machine, and the faults tests inject into them.

    with LocalCluster(nodes=5, n=3, r=2, w=2, data_dir=tmp) as cluster:
        client = cluster.client()
        cluster.kill("n2"); cluster.restart("n2")
        cluster.partition(["n1", "n2"], ["n3", "n4", "n5"]); cluster.heal()

Each node is ``python -m actors.node`` in its own process group, its output in
``DATA_DIR/<node>/node.log``. Leaving the ``with`` block (or ``stop()``) ends every
process this object started, by PID: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .client import Client
from .config import ClusterConfig, ensure_secret
from .errors import ClusterUnavailable, InvalidRequest, LeaderlessError
from .messages import LocalObject

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE = 5.0


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS says are free right now (bound all at once, so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCluster:
    """Starts, breaks and stops a cluster of node processes on 127.0.0.1."""

    def __init__(self, nodes: int = 5, n: int = 3, r: int | str = 2, w: int | str = 2,
                 data_dir: str | os.PathLike[str] | None = None, *, base_port: int | None = None,
                 host: str = "127.0.0.1", timeout: float = 5.0, partitions: int = 64, start_timeout: float = 30.0,
                 **settings: Any) -> None:
        """Configure a cluster (written to ``DATA_DIR/cluster.json``); ``start()`` or ``with`` starts it.

        ``settings`` are further ``ClusterConfig`` fields (``gossip_interval``, ``aae_interval``,
        ``hint_window``, ``tombstone_grace``, ``map_size``...). Local clusters gossip every 0.1 s
        by default, so failures are detected within about two seconds.
        """
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="leaderless-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        self.start_timeout = start_timeout
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._client: Client | None = None
        self._faults: dict[str, dict[str, Any]] = {}     # node -> SetFaults fields in force
        existing = (self.data_dir / "cluster.json").exists()
        if existing:
            self.config = ClusterConfig.load(self.data_dir)
            if len(self.config.nodes) != nodes or self.config.n != n:
                raise InvalidRequest(
                    f"{self.data_dir} holds a {len(self.config.nodes)}-node cluster with n={self.config.n}; "
                    f"asked for {nodes} nodes with n={n}: use another data dir")
            self.config.r, self.config.w, self.config.timeout = r, w, timeout
        else:
            if nodes < 1:
                raise InvalidRequest(f"nodes={nodes} must be at least 1")
            ports = list(range(base_port, base_port + nodes)) if base_port else free_ports(nodes, host)
            names = [f"n{i + 1}" for i in range(nodes)]
            settings.setdefault("gossip_interval", 0.1)
            unknown = sorted(set(settings) - set(ClusterConfig.__dataclass_fields__))
            if unknown:
                raise InvalidRequest(f"unknown cluster settings: {', '.join(unknown)}")
            self.config = ClusterConfig(nodes={name: (host, port) for name, port in zip(names, ports)}, n=n, r=r, w=w,
                                        partitions=max(partitions, _pow2_at_least(nodes)), timeout=timeout,
                                        ring_nodes=names, **settings)
        self.config.validate()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.secret = ensure_secret(self.data_dir)
        self.config.save(self.data_dir)

    # --- contract properties ---------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        return sorted(self.config.nodes, key=lambda name: int(name[1:]) if name[1:].isdigit() else name)

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        return {name: tuple(self.config.nodes[name]) for name in self.nodes}

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self._procs.items() if p.poll() is None}

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> "LocalCluster":
        for name, (host, port) in self.config.nodes.items():
            if not _port_free(host, port):
                raise ClusterUnavailable(f"port {port} on {host} (node {name}) is in use: is a cluster already "
                                         "running on this data dir, or pick another base port")
        atexit.register(self.stop)
        try:
            for name in self.nodes:
                self._spawn(name)
            self.wait_until_converged(self.nodes)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """End every node process this cluster started (SIGTERM, then SIGKILL), and close clients."""
        if self._client is not None:
            self._client.close()
            self._client = None
        for proc in self._procs.values():
            if proc.poll() is None:
                _signal(proc, signal.SIGCONT)      # a paused node cannot act on SIGTERM
                _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for name, proc in self._procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("node %s did not stop in %.0fs; killing it", name, STOP_GRACE)
                _signal(proc, signal.SIGKILL)
                proc.wait(timeout=5)
        for proc in self._procs.values():
            _close_pipe(proc)
        self._procs.clear()
        atexit.unregister(self.stop)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def kill(self, name: str) -> None:
        """SIGKILL a node's process (no chance to clean up: the crash case)."""
        proc = self._proc(name)
        _signal(proc, signal.SIGKILL)
        proc.wait(timeout=10)
        self._drop_admin(name)

    def terminate(self, name: str) -> None:
        """Stop a node cleanly (SIGTERM)."""
        proc = self._proc(name)
        _signal(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait(timeout=5)
        self._drop_admin(name)

    def restart(self, name: str, wait: bool = True) -> None:
        """Start a stopped (or killed) node again on the same data dir and port; it rejoins.

        Faults injected before (partition, slowness) apply to the restarted node too.
        """
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            self.terminate(name)
        self._spawn(name)
        if wait:
            self.wait_until_converged([n for n in self.nodes if self.is_running(n)])

    def wipe(self, name: str, wait: bool = True) -> None:
        """Simulated disk loss: stop ``name``, delete its data, start it empty (it catches up by repair)."""
        if self.is_running(name):
            self.kill(name)
        shutil.rmtree(self.data_dir / name / "store", ignore_errors=True)
        self.restart(name, wait=wait)

    def add_node(self, name: str | None = None, timeout: float = 60.0) -> str:
        """Start a new node and add it to the ring; its share of the keys is handed off to it.

        Returns once every running node uses the new ring; the data moves in the
        background (``wait_for_handoff`` waits for it).
        """
        if name is None:
            taken = {int(n[1:]) for n in self.config.nodes if n[1:].isdigit()}
            name = f"n{max(taken, default=0) + 1}"
        if name in self.config.nodes:
            raise InvalidRequest(f"node {name} already exists")
        host = next(iter(self.config.nodes.values()))[0]
        self.config.nodes[name] = (host, free_ports(1, host)[0])
        self.config.save(self.data_dir)
        self._spawn(name)
        self._admin_reset()
        member = next(n for n in self.nodes if n != name and self.is_running(n))
        version = self._admin().ring_change(member, "join", name, *self.config.nodes[name])
        self.wait_for_ring(version, timeout=timeout)
        return name

    def decommission(self, name: str, timeout: float = 120.0, force: bool = False) -> None:
        """Take ``name`` out of the ring: it streams its data to the new owners, then stops.

        Refused (``InvalidRequest``) when fewer members than the largest n in use would be left,
        unless ``force``."""
        self._proc(name)
        self._admin().ring_change(name, "leave", name, force=force)
        proc = self._procs[name]
        try:
            proc.wait(timeout=timeout)       # a node that has left exits by itself
        except subprocess.TimeoutExpired:
            raise ClusterUnavailable(f"{name} did not finish handing off its data within {timeout}s") from None
        _close_pipe(self._procs.pop(name))
        del self.config.nodes[name]
        self.config.save(self.data_dir)
        self._admin_reset()

    def wait_for_ring(self, version: int, timeout: float = 60.0) -> None:
        """Wait until every running node has adopted ring ``version`` (or a later one)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if all(s.get("ring_version", 0) >= version for n, s in status.items() if self.is_running(n)):
                return
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"ring version {version} did not reach every node within {timeout}s")
            time.sleep(0.05)

    def wait_for_handoff(self, timeout: float = 120.0) -> None:
        """Wait until no running node holds data it does not own and no hints are pending."""
        deadline = time.monotonic() + timeout
        while True:
            status = {n: s for n, s in self.status().items() if self.is_running(n)}
            if all(s.get("up") and s["handoff_pending"] == 0 and s["hints_pending"] == 0 for s in status.values()):
                return
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"handoff did not finish within {timeout}s")
            time.sleep(0.1)

    def is_running(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    # --- faults ----------------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: each node in a group reaches only its own group.

        Nodes named in no group keep reaching everybody who reaches them (none of the
        groups' members block them).
        """
        groups = [list(g) for g in groups]
        named = [node for g in groups for node in g]
        self._check(named)
        self.block({node: [n for n in named if n not in group] for group in groups for node in group})

    def block(self, blocked: Mapping[str, Iterable[str]]) -> None:
        """Set which peers each node cannot reach (both ways), for shapes groups cannot express
        (a majorities ring); nodes not named reach everybody."""
        self._check(list(blocked) + [peer for peers in blocked.values() for peer in peers])
        for node in self.nodes:
            self._faults.setdefault(node, {})["blocked"] = sorted(blocked.get(node, ()))
        self._push_faults()

    def faults(self, name: str) -> dict[str, Any]:
        """The faults in force on ``name`` (``SetFaults`` fields)."""
        self._check([name])
        return dict(self._faults.get(name, {}))

    def isolate(self, name: str) -> None:
        """Cut one node off from every other."""
        self.partition([name], [n for n in self.nodes if n != name])

    def heal(self) -> None:
        """Remove every network fault: partitions, slowness, loss, duplication, reordering.

        Clock skew is not a network fault and stays until ``skew_clock(node, 0)``.
        """
        for node in self.nodes:
            skew = self._faults.get(node, {}).get("clock_skew", 0.0)
            self._faults[node] = {"clock_skew": skew} if skew else {}
        self._push_faults()

    def slow(self, name: str, delay_ms: float = 50) -> None:
        """Delay every message to and from ``name`` by ``delay_ms`` (0 restores it)."""
        self._set_fault(name, delay_ms=float(delay_ms))

    def degrade(self, name: str, loss: float = 0.0, duplicate: float = 0.0, reorder_ms: float = 0.0) -> None:
        """Messages ``name`` sends to peers are lost / duplicated with these probabilities and
        held a random 0..reorder_ms, so they arrive out of order."""
        for label, rate in (("loss", loss), ("duplicate", duplicate)):
            if not 0.0 <= rate <= 1.0:
                raise InvalidRequest(f"{label}={rate} must be a probability between 0 and 1")
        self._set_fault(name, loss=float(loss), duplicate=float(duplicate), reorder_ms=float(reorder_ms))

    def skew_clock(self, name: str, seconds: float) -> None:
        """Move ``name``'s wall clock by ``seconds`` (what its hybrid logical clock reads)."""
        self._set_fault(name, clock_skew=float(seconds))

    def drop_replies(self, name: str, count: int = 1) -> None:
        """The next ``count`` answers ``name`` sends to clients are lost, after the requests were carried
        out: a lost acknowledgement (the client times out and retries)."""
        self._set_fault(name, drop_replies=int(count))
        self._faults[name].pop("drop_replies", None)       # one-shot: a later fault change must not re-arm it

    def pause(self, name: str) -> None:
        """SIGSTOP the node's process: it stops answering without closing a single connection."""
        _signal(self._proc(name), signal.SIGSTOP)

    def resume(self, name: str) -> None:
        """SIGCONT a paused node."""
        _signal(self._proc(name), signal.SIGCONT)

    def _set_fault(self, name: str, **fields: Any) -> None:
        self._check([name])
        self._faults.setdefault(name, {}).update(fields)
        self._push_faults([name])

    def _push_faults(self, nodes: Iterable[str] | None = None) -> None:
        for node in nodes if nodes is not None else self.nodes:
            if self.is_running(node):
                faults = self._faults.get(node, {})
                self._admin().set_faults(node, **faults)

    # --- observation -----------------------------------------------------------------------

    def client(self, nodes: Iterable[str] | None = None, timeout: float | None = None) -> Client:
        if nodes is not None:
            self._check(list(nodes))
        return Client(self.addresses, self.secret, nodes=nodes, timeout=timeout, node_timeout=self.config.timeout)

    def inspect(self, name: str, key: str) -> LocalObject | None:
        """That node's own stored object for ``key`` (no quorum); None when it holds none."""
        self._check([name])
        return self._admin().inspect(name, key)

    def status(self) -> dict[str, dict[str, Any]]:
        """Every node's status; a node that does not answer shows ``{"up": False}``."""
        everyone = self._admin().status_all()
        return {node: everyone[node] for node in self.nodes}

    def wait_until_converged(self, nodes: Iterable[str], timeout: float | None = None) -> None:
        """Wait until each of ``nodes`` answers and sees up every other of them it is not partitioned from,
        in its current incarnation (a restarted node presumes its peers up at once; this waits until
        gossip has told both sides of the restart)."""
        wanted = list(nodes)
        deadline = time.monotonic() + (timeout or self.start_timeout)
        last: Any = None
        while time.monotonic() < deadline:
            for name in wanted:
                proc = self._procs.get(name)
                if proc is not None and proc.poll() is not None:
                    raise ClusterUnavailable(f"node {name} exited with code {proc.returncode}; see "
                                             f"{self.data_dir / name / 'node.log'}")
            try:
                status = {name: self._admin().status(name, timeout=1.0) for name in wanted}
                views = {name: s["members"] for name, s in status.items()}
                pairs = [(a, b) for a in wanted for b in wanted if a != b and self._reachable(a, b)]
                if all(views[a].get(b) == "up" and status[a]["incarnations"].get(b) == status[b]["incarnation"]
                       for a, b in pairs):
                    return
                last = views
            except LeaderlessError as exc:
                self._drop_admin()
                last = exc
            time.sleep(0.05)
        raise ClusterUnavailable(f"nodes {', '.join(wanted)} did not all see each other within the timeout: {last}")

    def _reachable(self, a: str, b: str) -> bool:
        return (b not in self._faults.get(a, {}).get("blocked", ())
                and a not in self._faults.get(b, {}).get("blocked", ()))

    # --- plumbing --------------------------------------------------------------------------

    def _spawn(self, name: str) -> None:
        node_dir = self.data_dir / name
        node_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        faults = []     # a node (re)started during a fault is under it from its first message
        if self._faults.get(name):
            faults = ["--faults", json.dumps(self._faults[name])]
        _close_pipe(self._procs.get(name))
        with open(node_dir / "node.log", "ab") as logfile:
            # The node's stdin is a pipe only this process writes to: when this process is gone,
            # however it ended (SIGKILL included), the node reads EOF and stops itself.
            self._procs[name] = subprocess.Popen(
                [sys.executable, "-m", "actors.node", "--data-dir", str(self.data_dir), "--name", name,
                 "--owner-pipe", *faults],
                stdin=subprocess.PIPE, stdout=logfile, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)

    def _proc(self, name: str) -> subprocess.Popen[bytes]:
        self._check([name])
        proc = self._procs.get(name)
        if proc is None:
            raise InvalidRequest(f"node {name} was never started by this cluster")
        return proc

    def _check(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in self.config.nodes]
        if unknown:
            raise InvalidRequest(f"unknown nodes {', '.join(unknown)}; the cluster has {', '.join(self.nodes)}")

    def _admin(self) -> Client:
        if self._client is None:
            self._client = Client(self.addresses, self.secret)
        return self._client

    def _drop_admin(self, name: str | None = None) -> None:
        """Forget admin connections so the next call reconnects (and sees new nodes)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    _admin_reset = _drop_admin


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (``timeout``, a supervisor) raises ``KeyboardInterrupt`` as Ctrl-C does,
    so ``with LocalCluster(...)`` blocks and ``finally`` clauses stop what they started and remove their
    temporary directories. (Nodes stop by themselves anyway once their owner is gone; see ``_spawn``.)
    Only in the main thread; the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _close_pipe(proc: subprocess.Popen[bytes] | None) -> None:
    """Close our end of a node's owner pipe (the node has ended, or is being replaced)."""
    if proc is not None and proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _pow2_at_least(value: int) -> int:
    power = 8
    while power < value:
        power *= 2
    return power
