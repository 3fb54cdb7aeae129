"""The toy ceiling: the simplest Python design of durable 2-of-3 replicated writes, to show what the machine allows.

    python -m bench.toy [--time 10] [--window 1000] [--value-size 100] [--json]

One sender (this process) and three receiver processes, each with its own LMDB
environment, over loopback TCP. The sender pipelines: it keeps up to ``window`` writes
outstanding, sending each batch of frames to all three receivers in one ``sendall``.
A receiver reads whatever has arrived, writes all of it in one LMDB transaction,
commits with sync (group commit) and only then acknowledges the last sequence number
it holds. A write is done when two of the three receivers acknowledged it. No
versions, no routing, no actors, no authentication: only the work every durable
quorum write has to do, in Python.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import selectors
import socket
import struct
import tempfile
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

import click

from .histogram import LatencyHistogram, summary_ms
from .runner import CpuSampler, cpu_per_op, end_processes, machine

FRAME = struct.Struct("!QHI")       # sequence number, key length, value length; then key, value
ACK = struct.Struct("!Q")           # every write up to this sequence number is durable here
BATCH_MAX = 256                     # frames per send
MAP_SIZE = 1 << 30


def receiver_main(path: str, conn: Connection) -> None:
    """One replica: accept the sender, then read / one transaction / sync commit / ack, until EOF."""
    import lmdb

    env = lmdb.open(path, map_size=MAP_SIZE, sync=True, metasync=True)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    conn.send(server.getsockname()[1])
    server.settimeout(30)
    sock, _ = server.accept()
    server.close()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray()
    try:
        while True:
            try:
                data = sock.recv(1 << 20)
            except ConnectionResetError:        # the sender left with acks unread
                break
            if not data:
                break
            buffer += data
            sock.setblocking(False)
            try:                                    # everything already here joins this commit
                while True:
                    more = sock.recv(1 << 20)
                    if not more:
                        break
                    buffer += more
            except BlockingIOError:
                pass
            sock.setblocking(True)
            last, used = _apply(env, buffer)
            del buffer[:used]
            if last >= 0:
                try:
                    sock.sendall(ACK.pack(last))
                except (BrokenPipeError, ConnectionResetError):
                    break
    finally:
        sock.close()
        env.close()


def _apply(env: Any, buffer: bytearray) -> tuple[int, int]:
    """Write every complete frame in ``buffer`` in one transaction; returns (last sequence, bytes used)."""
    view = memoryview(buffer)
    offset, last, size = 0, -1, len(buffer)
    with env.begin(write=True) as txn:
        while offset + FRAME.size <= size:
            seq, klen, vlen = FRAME.unpack_from(view, offset)
            end = offset + FRAME.size + klen + vlen
            if end > size:
                break
            k = offset + FRAME.size
            txn.put(bytes(view[k:k + klen]), bytes(view[k + klen:end]))
            last, offset = seq, end
    view.release()
    return last, offset


def run_toy(time_s: float = 10.0, warmup_s: float = 1.0, window: int = 1000, value_size: int = 100,
            keys: int = 10_000, replicas: int = 3, acks: int = 2, seed: int = 7) -> dict[str, Any]:
    """Start the receivers, drive writes for warm-up plus ``time_s``, stop everything; returns the report."""
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    socks: list[socket.socket] = []
    with tempfile.TemporaryDirectory(prefix="leaderless-toy-") as tmp:
        try:
            ports = []
            for i in range(replicas):
                parent_end, child_end = ctx.Pipe()
                proc = ctx.Process(target=receiver_main, args=(f"{tmp}/r{i}", child_end), name=f"toy-receiver-{i}",
                                   daemon=True)
                proc.start()
                child_end.close()
                procs.append(proc)
                if not parent_end.poll(30):
                    raise RuntimeError("a toy receiver did not start")
                ports.append(parent_end.recv())
            for port in ports:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                socks.append(s)
            sampler = CpuSampler({f"r{i}": p.pid for i, p in enumerate(procs)})
            result = _send_loop(socks, sampler, time_s, warmup_s, window, value_size, keys, acks, seed)
        finally:
            for s in socks:
                s.close()
            for proc in procs:
                proc.join(timeout=5)
            end_processes(procs)
    result["config"] = {"time_s": time_s, "warmup_s": warmup_s, "window": window, "value_size": value_size,
                        "keys": keys, "replicas": replicas, "acks": acks, "design": __doc__.split("\n\n")[2]
                        .replace("\n", " ")}
    result["machine"] = machine()
    return result


def _send_loop(socks: list[socket.socket], sampler: CpuSampler, time_s: float, warmup_s: float, window: int,
               value_size: int, keys: int, acks: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    value = rng.randbytes(value_size)
    selector = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        selector.register(s, selectors.EVENT_READ, i)
    acked = [-1] * len(socks)
    partial = [b""] * len(socks)
    batches: deque[list[Any]] = deque()     # [first seq, last seq, send time]
    hist = LatencyHistogram()
    clock = time.perf_counter
    start = clock()
    t_measure, t_end = start + warmup_s, start + warmup_s + time_s
    per_second = [0] * (int(warmup_s + time_s) + 2)
    next_seq = 0
    done_upto = -1
    measured = 0
    cpu0 = None
    while True:
        now = clock()
        if cpu0 is None and now >= t_measure:
            cpu0 = (time.process_time(), now)
            sampler.start()
        if now >= t_end:
            break
        room = window - (next_seq - 1 - done_upto)
        if room > 0:
            count = min(room, BATCH_MAX)
            frames = []
            for seq in range(next_seq, next_seq + count):
                key = b"user%08d" % rng.randrange(keys)
                frames.append(FRAME.pack(seq, len(key), value_size) + key + value)
            data = b"".join(frames)
            sent_at = clock()
            for s in socks:
                s.sendall(data)
            batches.append([next_seq, next_seq + count - 1, sent_at])
            next_seq += count
        for selkey, _ in selector.select(timeout=0 if room > BATCH_MAX else 0.05):
            i = selkey.data
            data = partial[i] + socks[i].recv(1 << 16)
            whole = len(data) - len(data) % ACK.size
            if whole:
                acked[i] = ACK.unpack_from(data, whole - ACK.size)[0]
            partial[i] = data[whole:]
        quorum = sorted(acked, reverse=True)[acks - 1]
        if quorum > done_upto:
            done_at = clock()
            while batches and batches[0][0] <= quorum:
                first, last, sent_at = batches[0]
                upto = min(last, quorum)
                n = upto - first + 1
                if t_measure <= done_at <= t_end:
                    hist.record((done_at - sent_at) * 1e6, n)
                    measured += n
                second = int(done_at - start)
                if second < len(per_second):
                    per_second[second] += n
                if upto == last:
                    batches.popleft()
                else:
                    batches[0][0] = upto + 1
            done_upto = quorum
    now = clock()
    cpu0 = cpu0 or (time.process_time(), now)
    busy = (time.process_time() - cpu0[0]) / max(now - cpu0[1], 1e-9)
    result = {"system": "toy", "workload": "w", "throughput": round(measured / time_s, 1), "ops": {"write": measured},
              "latency_ms": {"write": summary_ms(hist)}, "errors": 0, "error_kinds": {},
              "client_cpu": [round(busy, 3)], "server_cpu": sampler.stop(), "per_second": per_second}
    result["cpu_us_per_op"] = cpu_per_op(result)
    return result


@click.command()
@click.option("--time", "time_s", default=10.0, show_default=True, type=float)
@click.option("--window", default=1000, show_default=True, type=int, help="Writes outstanding.")
@click.option("--value-size", default=100, show_default=True, type=int)
@click.option("--keys", default=10_000, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True)
def main(time_s: float, window: int, value_size: int, keys: int, as_json: bool) -> None:
    result = run_toy(time_s=time_s, window=window, value_size=value_size, keys=keys)
    if as_json:
        click.echo(json.dumps(result))
        return
    lat = result["latency_ms"]["write"]
    click.echo(f"toy ceiling: {result['throughput']:,.0f} durable 2-of-3 writes/s; p50 {lat['p50']:.2f} ms, "
               f"p99 {lat['p99']:.2f} ms; sender busy {result['client_cpu'][0]:.2f}, receivers "
               + ", ".join(f"{v:.2f}" for v in result["server_cpu"].values()))


if __name__ == "__main__":
    main()
