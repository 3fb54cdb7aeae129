"""A throwaway 3-member etcd cluster on loopback ports, for the side-by-side benchmark.

    with EtcdCluster(tmp_dir) as etcd:        # raises PeerUnavailable when etcd is not on PATH
        etcd.endpoints                        # [("127.0.0.1", port), ...] client URLs (HTTP/JSON gateway)

The members come from the Debian package ``etcd-server`` (the benchmark never installs
it). Each runs with its defaults, so its write-ahead log is fsynced before a write is
acknowledged, like our replicas' commits. Every member is ended by PID on exit.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

STOP_GRACE_S = 5.0
START_TIMEOUT_S = 30.0


class PeerUnavailable(RuntimeError):
    """A peer system cannot run here (not installed, would not start): the comparison skips it."""


def free_ports(count: int) -> list[int]:
    from actors.cluster import free_ports as _free

    return _free(count)


class EtcdCluster:
    def __init__(self, base_dir: str | os.PathLike[str], members: int = 3) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise PeerUnavailable("etcd is not on PATH (Debian: apt-get install etcd-server etcd-client)")
        self.binary: str = binary
        self.base_dir = Path(base_dir)
        self.members = members
        ports = free_ports(2 * members)
        self.client_ports, self.peer_ports = ports[:members], ports[members:]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.client_ports]

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items() if p.poll() is None}

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        names = [f"m{i + 1}" for i in range(self.members)]
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, self.peer_ports))
        token = f"leaderless-bench-{os.getpid()}-{time.monotonic_ns()}"
        for name, client, peer in zip(names, self.client_ports, self.peer_ports):
            member_dir = self.base_dir / name
            member_dir.mkdir(parents=True, exist_ok=True)
            args = [self.binary, "--name", name, "--data-dir", str(member_dir / "data"),
                    "--listen-client-urls", f"http://127.0.0.1:{client}",
                    "--advertise-client-urls", f"http://127.0.0.1:{client}",
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", token, "--logger", "zap", "--log-level", "error"]
            with open(member_dir / "etcd.log", "ab") as log:
                self.procs[name] = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = set(self.endpoints)
        last = ""
        while pending:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise PeerUnavailable(f"etcd member {name} exited with code {proc.returncode}; see "
                                          f"{self.base_dir / name / 'etcd.log'}")
            for host, port in list(pending):
                try:
                    conn = http.client.HTTPConnection(host, port, timeout=2)
                    conn.request("POST", "/v3/kv/put", '{"key":"aGVhbHRo","value":"b2s="}',
                                 {"Content-Type": "application/json"})
                    response = conn.getresponse()
                    body = response.read()
                    conn.close()
                    if response.status == 200:
                        pending.discard((host, port))
                    else:
                        last = f"{response.status} {body[:100]!r}"
                except OSError as exc:
                    last = str(exc)
            if time.monotonic() > deadline:
                raise PeerUnavailable(f"etcd did not become healthy within {START_TIMEOUT_S:.0f}s: {last}")
            if pending:
                time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                _kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.procs.clear()


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
