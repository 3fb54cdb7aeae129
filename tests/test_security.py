"""Bad input on a node's port: wrong secret, garbage, oversized frames, forbidden classes.

Each case must close only the offending connection, with a logged reason; the node
keeps serving good clients.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
import time

import msgspec
import pytest

from actors import AuthenticationFailed, Client, LocalCluster
from actors.messages import Ack, Hello
from actors.wire import MAGIC, NONCE, client_handshake, encode

pytestmark = pytest.mark.cluster


def still_serves(cluster: LocalCluster, node: str = "n1") -> None:
    with cluster.client(nodes=[node]) as client:
        client.put("alive", b"yes", context=client.get("alive").context)
        assert client.get("alive").values == [b"yes"]


def raw_connection(cluster: LocalCluster, node: str = "n1", authenticate: bool = True) -> socket.socket:
    sock = socket.create_connection(cluster.addresses[node], timeout=5)
    if authenticate:
        client_handshake(sock, cluster.secret)
        sock.settimeout(5)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def refused_count(cluster: LocalCluster, node: str = "n1") -> int:
    log = (cluster.data_dir / node / "node.log").read_text()
    return log.count("refused connection") + log.count("closing client")


def test_a_client_with_the_wrong_secret_gets_authentication_failed(shared_cluster: LocalCluster) -> None:
    with Client(shared_cluster.addresses, b"not-the-secret", nodes=["n1"]) as impostor:
        with pytest.raises(AuthenticationFailed):
            impostor.put("k", b"v")
    still_serves(shared_cluster)


def test_a_node_that_does_not_know_the_secret_is_refused_by_the_client(shared_cluster: LocalCluster) -> None:
    # A fake "node": greets like a node, then cannot prove the secret.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def fake_node() -> None:
        conn, _ = server.accept()
        conn.sendall(MAGIC + os.urandom(NONCE))
        conn.recv(64)
        conn.sendall(b"\x01" + os.urandom(32))
        conn.close()

    thread = threading.Thread(target=fake_node, daemon=True)
    thread.start()
    try:
        with Client({"fake": server.getsockname()}, shared_cluster.secret) as client:
            with pytest.raises(AuthenticationFailed):
                client.put("k", b"v")
    finally:
        thread.join(timeout=5)
        server.close()


def test_garbage_instead_of_a_handshake_closes_the_connection_and_the_node_keeps_serving(
        shared_cluster: LocalCluster) -> None:
    sock = raw_connection(shared_cluster, authenticate=False)
    sock.recv(len(MAGIC) + NONCE)
    sock.sendall(os.urandom(4096))
    assert closed_by_peer(sock)
    sock.close()
    still_serves(shared_cluster)


def test_garbage_frames_after_authenticating_close_the_connection(shared_cluster: LocalCluster) -> None:
    sock = raw_connection(shared_cluster)
    sock.sendall(encode(Hello("client")))
    sock.sendall(struct.pack(">I", 100) + os.urandom(100))
    assert closed_by_peer(sock)
    sock.close()
    still_serves(shared_cluster)


def test_an_oversized_frame_is_refused_before_it_is_read(shared_cluster: LocalCluster) -> None:
    sock = raw_connection(shared_cluster)
    sock.sendall(encode(Hello("client")))
    sock.sendall(struct.pack(">I", 1 << 31))     # claims 2 GiB; nothing of it is buffered
    assert closed_by_peer(sock)
    sock.close()
    still_serves(shared_cluster)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/leaderless-pwned",))


def test_a_frame_naming_a_forbidden_class_is_not_unpickled(shared_cluster: LocalCluster) -> None:
    marker = "/tmp/leaderless-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    sock = raw_connection(shared_cluster)
    sock.sendall(encode(Hello("client")))
    payload = pickle.dumps(Evil())
    sock.sendall(struct.pack(">I", len(payload)) + payload)
    assert closed_by_peer(sock)
    sock.close()
    assert not os.path.exists(marker)
    still_serves(shared_cluster)


@pytest.mark.parametrize("frame", [
    encode(Ack(1, "n2", True)),                                          # a peer's message, from a client
    (lambda body: struct.pack(">I", len(body)) + body)(msgspec.msgpack.encode([["not", "a", "request"]])),
])
def test_an_unknown_message_type_from_a_client_closes_its_connection(shared_cluster: LocalCluster,
                                                                     frame: bytes) -> None:
    sock = raw_connection(shared_cluster)
    sock.sendall(encode(Hello("client")))
    sock.sendall(frame)
    assert closed_by_peer(sock)
    sock.close()
    still_serves(shared_cluster)


def test_refused_connections_are_logged_with_a_reason(shared_cluster: LocalCluster) -> None:
    before = refused_count(shared_cluster)
    with Client(shared_cluster.addresses, b"wrong", nodes=["n1"]) as impostor:
        with pytest.raises(AuthenticationFailed):
            impostor.get("k")
    deadline = time.monotonic() + 5
    while refused_count(shared_cluster) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refused_count(shared_cluster) > before
