"""What hostile input costs a node: RSS before and after thousands of malicious frames.

    python -m bench.hostile                  # 10,000 frames against a 3-node LocalCluster
    python -m bench.hostile --frames 2000 --json

Each frame is sent on a fresh authenticated client connection (the node closes the
connection after a frame it cannot decode): the pickle memo frame of issue 21
(``LONG_BINPUT 0x4E4387CC``, 20 GB under the old unpickler), MessagePack headers claiming
2**32 - 1 items, frames of empty maps in the one field that takes any data (a CRDT
operation: the worst allocation per byte measured), random bytes and truncated valid
frames, in turn. Reported: the attacked node's RSS before, its peak during (sampled every
50 ms) and after, the frames sent, and whether the node still serves a client.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import sys
import tempfile
import threading
import time
from typing import Any

from actors import LocalCluster
from actors.messages import ClientPut, Hello
from actors.wire import client_handshake, encode


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def malicious_frames(rng: random.Random) -> list[bytes]:
    """One of each kind, as payloads (the 4-byte length is added when sent)."""
    empty_maps = b"\x91\x96\x04\x01\xa1b\xa1k\xdd" + (200_000).to_bytes(4, "big") + b"\x80" * 200_000 + b"\xa2id"
    valid = encode(ClientPut(1, "k", b"v" * 64))[4:]
    return [
        b"\x80\x05Nr" + struct.pack("<I", 0x4E4387CC) + b".",       # the pickle memo frame
        b"\x91\xdd\xff\xff\xff\xff",                                 # an array header claiming 2**32 - 1 items
        b"\x91\x93\x02\x01\xdb\xff\xff\xff\xff",                     # a str header claiming 4 GiB
        empty_maps,
        rng.randbytes(rng.randrange(1, 4096)),
        valid[:rng.randrange(1, len(valid))],
    ]


def attack(address: tuple[str, int], secret: bytes, frames: int, seed: int) -> int:
    """Send ``frames`` malicious frames, one per authenticated connection; how many were sent."""
    rng = random.Random(seed)
    sent = 0
    while sent < frames:
        for payload in malicious_frames(rng):
            if sent >= frames:
                break
            with socket.create_connection(address, timeout=5) as sock:
                client_handshake(sock, secret)
                sock.sendall(encode(Hello("client")) + struct.pack(">I", len(payload)) + payload)
                sock.settimeout(5)
                try:
                    while sock.recv(4096):        # until the node closes it
                        pass
                except OSError:
                    pass
            sent += 1
    return sent


def run(frames: int = 10_000, seed: int = 1) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="leaderless-hostile-") as data_dir, \
            LocalCluster(nodes=3, data_dir=data_dir) as cluster:
        client = cluster.client()
        client.put("before", b"v", w=3)
        pid = cluster.pids["n1"]
        time.sleep(1.0)                                   # settle after start
        before = rss_bytes(pid)
        peak = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                peak[0] = max(peak[0], rss_bytes(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        try:
            sent = attack(cluster.addresses["n1"], cluster.secret, frames, seed)
        finally:
            stop.set()
            sampler.join()
        elapsed = time.monotonic() - started
        time.sleep(1.0)
        after = rss_bytes(pid)
        with cluster.client(nodes=["n1"]) as through_n1:
            through_n1.put("after", b"v", w=3)
            serves = through_n1.get("after", r=3).values == [b"v"]
        return {"frames": sent, "seconds": round(elapsed, 1), "rss_before_mb": round(before / 2**20, 1),
                "rss_peak_mb": round(peak[0] / 2**20, 1), "rss_after_mb": round(after / 2**20, 1),
                "growth_mb": round((after - before) / 2**20, 1), "still_serves": serves}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.frames, args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['frames']} malicious frames in {result['seconds']} s: node RSS {result['rss_before_mb']} MB "
              f"before, {result['rss_peak_mb']} MB at peak, {result['rss_after_mb']} MB after "
              f"({result['growth_mb']:+} MB); still serves: {result['still_serves']}")
    return 0 if result["still_serves"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
