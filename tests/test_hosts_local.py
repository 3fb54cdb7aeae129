"""A cluster across hosts, on one host: `leaderless node start` for a first node, joiners and restarts,
clients through seeds, and one clear line (with nothing written) for every bad input.

The same commands across network namespaces, with links cut and nodes moved, are in test_hosts.py.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import LeaderlessError, connect
from actors import client as client_module
from tests.nodeprocs import Procs, copy_secret, run_cli, snapshot
from tests.waiting import wait_for

pytestmark = pytest.mark.cluster

HOST = "127.0.0.1"
REFRESH_S = getattr(client_module, "REFRESH_S", 5.0)     # how often a client asks for the members


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def addr(port: int) -> str:
    return f"{HOST}:{port}"


def members_up(seed: str, secret: Path, names: set[str]) -> bool:
    """Every node of ``names`` answers and sees every other one up."""
    try:
        with connect(seeds=[seed], secret=str(secret)) as client:
            status = client.status_all(timeout=2.0)
    except LeaderlessError:
        return False
    return all(status.get(n, {}).get("up") and all(status[n]["members"].get(m) == "up" for m in names)
               for n in names)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.close()


def start_three(procs: Procs, root: Path, n: int = 3) -> dict[str, int]:
    """a1 starts a new cluster (n=3, r=2, w=2); a2, then a3 join through a1 with copies of its secret."""
    ports = dict(zip(("a1", "a2", "a3"), free_ports(3)))
    procs.start("a1", "--listen", addr(ports["a1"]), "--data-dir", str(root / "a1"), "--n", str(n), "--r", "2",
                "--w", "2")
    wait_for(lambda: (root / "a1" / "secret").exists() and members_up(addr(ports["a1"]), root / "a1" / "secret",
                                                                        {"a1"}), 20, "a1 up", explain=lambda: procs.log("a1"))
    for name in ("a2", "a3"):
        copy_secret(root / "a1", root / name)
        procs.start(name, "--listen", addr(ports[name]), "--data-dir", str(root / name), "--join", addr(ports["a1"]))
        wait_for(lambda name=name: _in_ring(addr(ports["a1"]), root / "a1" / "secret", name), 30, f"{name} joined",
                 explain=lambda name=name: procs.log(name))
    wait_for(lambda: members_up(addr(ports["a1"]), root / "a1" / "secret", {"a1", "a2", "a3"}), 30, "all up")
    return ports


def _in_ring(seed: str, secret: Path, name: str) -> bool:
    try:
        with connect(seeds=[seed], secret=str(secret)) as client:
            return all(name in s.get("ring_nodes", ()) for s in client.status_all(timeout=2.0).values() if s.get("up"))
    except LeaderlessError:
        return False


def put_eventually(client, key: str, value: bytes, w: int, timeout: float = 20.0) -> None:
    def attempt() -> bool:
        try:
            client.put(key, value, w=w, timeout=2.0)
            return True
        except LeaderlessError:
            return False
    wait_for(attempt, timeout, f"a put of {key} at w={w}", interval=0.2)


# --- a cluster started one host at a time ---------------------------------------------------------

def test_a_cluster_started_one_node_at_a_time_keeps_its_n_and_clients_learn_later_members(
        procs: Procs, tmp_path: Path) -> None:
    ports = start_three(procs, tmp_path)
    seed, secret = addr(ports["a1"]), tmp_path / "a1" / "secret"
    client = connect(seeds=[seed], secret=str(secret))
    by_dir = connect(str(tmp_path / "a1"))        # a1's cluster.json names a1 alone: it learns the rest
    try:
        assert sorted(client.addresses) == ["a1", "a2", "a3"]
        by_dir.get("k0")                           # a client follows the members while it is in use
        wait_for(lambda: sorted(by_dir.addresses) == ["a1", "a2", "a3"], 2 * REFRESH_S + 5, "connect(data_dir) follows",
                 explain=lambda: by_dir.addresses)
        status = client.status_all()
        assert {s["ring_target_n"] for s in status.values()} == {3}        # not min(n, 1) for good
        for i in range(30):
            client.put(f"k{i}", b"v", w=3)
        # The CLI through the seeds: every client command, and status with every member's address.
        out = run_cli("--seeds", seed, "--secret", str(secret), "put", "cli-key", "cli-value")
        assert out.returncode == 0, out.stderr
        out = run_cli("--seeds", f"{HOST}:1,{addr(ports['a2'])}", "--secret", str(secret), "get", "cli-key", "--r", "3")
        assert (out.returncode, out.stdout.strip()) == (0, "cli-value"), out.stderr

        # a4 joins after the client connected (through a2, a seed the client never heard of).
        (port4,) = free_ports(1)
        copy_secret(tmp_path / "a1", tmp_path / "a4")
        procs.start("a4", "--listen", addr(port4), "--data-dir", str(tmp_path / "a4"), "--join",
                    f"{HOST}:1,{addr(ports['a2'])}")
        wait_for(lambda: "a4" in client.addresses, 3 * REFRESH_S + 30, "the client learns a4",
                 explain=lambda: (client.addresses, procs.log("a4")[-2000:]))
        assert client.addresses["a4"] == (HOST, port4)
        wait_for(lambda: "a4" in by_dir.addresses, 2 * REFRESH_S + 5, "connect(data_dir) learns a4 too")
        wait_for(lambda: client.status("a4").get("ring_target_n") == 3 and "a4" in client.status("a4")["ring_nodes"],
                 30, "a4 in the ring")
        out = run_cli("cluster", "status", env={"LEADERLESS_SEEDS": seed, "LEADERLESS_SECRET": str(secret)})
        assert out.returncode == 0, out.stderr
        for name, port in {**ports, "a4": port4}.items():
            assert name in out.stdout and str(port) in out.stdout, out.stdout
    finally:
        client.close()
        by_dir.close()


# --- restarts --------------------------------------------------------------------------------------

def test_a_node_restarted_at_a_new_port_is_used_there_by_peers_and_clients(make_cluster, procs: Procs) -> None:
    cluster = make_cluster(nodes=3, n=3)
    client = cluster.client()                     # made before the move: it must learn the new address
    client.put("before", b"v", w=3)
    cluster.kill("n3")
    (new_port,) = free_ports(1)
    procs.start("n3", "--listen", addr(new_port), "--data-dir", str(cluster.data_dir))
    started = time.monotonic()
    put_eventually(client, "after-move", b"v", w=3, timeout=30)            # n1 and n2 reach n3 where it is now
    print(f"w=3 writes work again {time.monotonic() - started:.1f}s after n3 restarted on a new port")
    for i in range(20):                          # a busy machine may delay a heartbeat: a retry is no failure
        put_eventually(client, f"moved-{i}", b"v", w=3, timeout=10)
    wait_for(lambda: client.addresses.get("n3") == (HOST, new_port), 3 * REFRESH_S + 5, "the client follows n3",
             explain=lambda: client.addresses)
    assert client.status("n3")["address"] == [HOST, new_port]
    assert all(cluster.inspect(node, "moved-7") is not None for node in ("n1", "n2"))


def test_joined_nodes_restart_with_their_own_commands_while_their_seed_is_down(procs: Procs, tmp_path: Path) -> None:
    ports = start_three(procs, tmp_path)
    secret = tmp_path / "a1" / "secret"
    with connect(seeds=[addr(ports["a1"])], secret=str(secret)) as client:
        for i in range(20):
            client.put(f"k{i}", b"before", w=3)
    procs.stop("a1")                       # the seed of a2 and a3 is down
    procs.stop("a3")
    procs.kill("a2")
    command = {name: ("--listen", addr(ports[name]), "--data-dir", str(tmp_path / name), "--join", addr(ports["a1"]))
               for name in ("a2", "a3")}
    procs.start("a2", *command["a2"])
    a2 = [addr(ports["a2"])]

    def a2_members() -> dict | None:
        try:
            with connect(seeds=a2, secret=str(secret)) as c:
                return c.members()
        except LeaderlessError:
            return None
    members = wait_for(a2_members, 30, "a2 restarted", explain=lambda: procs.log("a2")[-3000:])
    # a3 joined after a2 (a2's cluster.json never named it) and is down: a2 knows where it is from gossip it saved.
    assert members["a3"][:2] == (HOST, ports["a3"]), members
    procs.start("a3", *command["a3"])

    def both_up() -> bool:
        try:
            with connect(seeds=a2, secret=str(secret)) as c:
                status = c.status_all(timeout=2.0)
        except LeaderlessError:
            return False
        return all(status[n].get("up") and status[n]["members"].get(m) == "up" for n in ("a2", "a3") for m in ("a2", "a3"))
    wait_for(both_up, 30, "a2 and a3 back, seeing each other", explain=lambda: procs.log("a3")[-3000:])
    assert procs.running("a2") and procs.running("a3")
    with connect(seeds=a2, secret=str(secret)) as client:
        put_eventually(client, "while-a1-down", b"v", w=2)
        assert client.get("k3", r=2).values == [b"before"]


# --- bad input: one line, exit code 1, nothing written -----------------------------------------

@pytest.fixture(scope="module")
def cluster_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, int]]]:
    root = tmp_path_factory.mktemp("cluster-a")
    p = Procs(root)
    try:
        yield root, start_three(p, root)
    finally:
        p.close()


def refused(*args: str, data_dir: Path) -> str:
    """Run ``leaderless node start ARGS``: it must fail with one ``error:`` line and leave ``data_dir`` as it was."""
    before = snapshot(data_dir)
    out = run_cli("node", "start", *args, "--data-dir", str(data_dir))
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0, (out.stdout, out.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert snapshot(data_dir) == before, f"{data_dir} changed"
    return lines[0]


def test_joining_with_a_wrong_or_missing_secret_is_refused(cluster_a, tmp_path: Path) -> None:
    ports = cluster_a[1]
    seed = addr(ports["a1"])
    (port,) = free_ports(1)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "secret").write_text(secrets.token_hex(32))
    (wrong / "secret").chmod(0o600)
    line = refused("--name", "b1", "--listen", addr(port), "--join", seed, data_dir=wrong)
    assert "refused the secret" in line, line
    line = refused("--name", "b1", "--listen", addr(port), "--join", seed, data_dir=tmp_path / "missing")
    assert line.startswith("error: no cluster secret"), line
    (tmp_path / "empty").mkdir()
    refused("--name", "b1", "--listen", addr(port), "--join", seed, data_dir=tmp_path / "empty")


def test_an_unreachable_seed_list_is_refused(cluster_a, tmp_path: Path) -> None:
    root = cluster_a[0]
    dead = free_ports(2)
    copy_secret(root / "a1", tmp_path / "b1")
    line = refused("--name", "b1", "--listen", addr(free_ports(1)[0]), "--join", f"{addr(dead[0])},{addr(dead[1])}",
                   data_dir=tmp_path / "b1")
    assert "no seed answered" in line and str(dead[0]) in line and str(dead[1]) in line, line


def test_a_name_taken_by_a_live_member_is_refused(cluster_a, tmp_path: Path) -> None:
    root, ports = cluster_a
    copy_secret(root / "a1", tmp_path / "b1")
    line = refused("--name", "a2", "--listen", addr(free_ports(1)[0]), "--join", addr(ports["a1"]),
                   data_dir=tmp_path / "b1")
    assert "a2 is already a member" in line, line


def test_a_data_dir_of_another_cluster_is_refused(cluster_a, procs: Procs, tmp_path: Path) -> None:
    root, ports = cluster_a
    seed = addr(ports["a1"])
    other = tmp_path / "other"                      # cluster B's first node, b1, started and stopped
    (port,) = free_ports(1)
    procs.start("b1", "--listen", addr(port), "--data-dir", str(other))
    wait_for(lambda: members_up(addr(port), other / "secret", {"b1"}) if (other / "secret").exists() else False,
             20, "b1 up")
    procs.stop("b1")
    line = refused("--name", "a9", "--join", seed, data_dir=other)          # another node's data dir
    assert "another node" in line, line
    line = refused("--name", "b1", "--join", seed, data_dir=other)          # b1's own, but cluster B's
    assert "refused the secret" in line and "another cluster" in line, line
    copy_secret(root / "a1", other)                 # even with cluster A's secret copied over B's
    line = refused("--name", "b1", "--join", seed, data_dir=other)
    assert "another cluster" in line, line


def test_an_address_peers_cannot_use_is_refused(tmp_path: Path) -> None:
    line = refused("--name", "a1", "--listen", "0.0.0.0:7001", data_dir=tmp_path / "a1")
    assert "--advertise" in line, line
    line = refused("--name", "a1", "--listen", "0.0.0.0:7001", "--advertise", "0.0.0.0:7001", data_dir=tmp_path / "a1")
    assert "not an address peers can reach" in line, line


def test_bench_runs_against_a_cluster_reached_through_seeds(cluster_a, tmp_path: Path) -> None:
    root, ports = cluster_a
    out = run_cli("bench", "--seeds", f"{HOST}:1,{addr(ports['a2'])}", "--secret", str(root / "a1" / "secret"),
                  "--workload", "a", "--time", "1", "--warmup", "0.2", "--clients", "1", "--inflight", "4", "--keys",
                  "50", "--json", "--out", str(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["throughput"] > 0 and not report["errors"], report.get("errors")
    assert report["config"]["bucket"] == "bench-n3r2w2" and report["config"]["seeds"]
    assert sorted(report["servers_sampled"]) == ["a1", "a2", "a3"]          # `leaderless node start` processes
