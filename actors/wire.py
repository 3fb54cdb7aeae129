"""Bytes on a socket: the authentication handshake and framing.

Handshake (mutual HMAC-SHA256 challenge-response over the cluster secret), before a
single byte is decoded, within one deadline (``HANDSHAKE_TIMEOUT``) as a whole:

    server -> client   MAGIC(4) + server_nonce(32)
    client -> server   client_nonce(32) + HMAC(secret, b"c" + server_nonce + client_nonce)
    server -> client   b"\\x01" + HMAC(secret, b"s" + client_nonce + server_nonce)   (accepted)
                       b"\\x00" and close                                           (refused)

Then frames: a 4-byte big-endian length and a MessagePack array of messages, each
``[tag, field, ...]`` as ``actors.messages`` declares it (``encode_many``: what one actor
sends one peer while handling one batch). Frames longer than the reader's limit are
refused before they are read; a frame that does not decode into the declared types
closes the connection (``ProtocolError``).

The protocol is versioned by ``MAGIC``: ``LDL2`` is this one (MessagePack frames). A node
or client of another version fails the handshake with a clear error, never a garbled
message: the nodes and clients of one cluster run one release. Within a version, tags
are never reused and fields are only ever added at the end with a default.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import time
from typing import Any, Union

import msgspec

from . import payloads
from .errors import AuthenticationFailed, ProtocolError
from .messages import WIRE_TYPES

MAGIC = b"LDL2"
NONCE = 32
MAC = 32
MAX_FRAME = 64 << 20          # a frame between nodes, or a node's reply (siblings of up to 16 MiB each)
MAX_REQUEST_FRAME = 20 << 20  # a frame from a client: one value of at most 16 MiB and its request
HEADER = struct.Struct(">I")
HANDSHAKE_TIMEOUT = 5.0


def _mac(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"".join(parts), hashlib.sha256).digest()


def time_left(sock: socket.socket, deadline: float) -> None:
    """Give ``sock``'s next operation what is left until ``deadline`` (time.monotonic); ``TimeoutError`` if
    nothing is: a handshake is bounded as a whole, however slowly the peer trickles its bytes in."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("handshake deadline passed")
    sock.settimeout(left)


def recv_exactly(sock: socket.socket, size: int, deadline: float | None = None) -> bytes:
    """Exactly ``size`` bytes; with ``deadline`` (time.monotonic), all of them by then."""
    chunks = []
    while size:
        if deadline is not None:
            time_left(sock, deadline)
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionResetError("connection closed by peer")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def server_handshake(sock: socket.socket, secret: bytes, deadline: float | None = None) -> None:
    """Authenticate an accepted connection; raises AuthenticationFailed (after telling the peer).

    The whole exchange must be done by ``deadline`` (time.monotonic; default HANDSHAKE_TIMEOUT from now),
    else ``TimeoutError``: a per-recv timeout would let a client trickling a byte at a time hold
    the connection (and its thread) for minutes.
    """
    if deadline is None:
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
    time_left(sock, deadline)
    server_nonce = os.urandom(NONCE)
    sock.sendall(MAGIC + server_nonce)
    answer = recv_exactly(sock, NONCE + MAC, deadline)
    client_nonce, proof = answer[:NONCE], answer[NONCE:]
    if not hmac.compare_digest(proof, _mac(secret, b"c", server_nonce, client_nonce)):
        try:
            sock.sendall(b"\x00")
        except OSError:
            pass
        raise AuthenticationFailed("client proof does not match the cluster secret")
    sock.sendall(b"\x01" + _mac(secret, b"s", client_nonce, server_nonce))
    sock.settimeout(None)


def client_handshake(sock: socket.socket, secret: bytes) -> None:
    """Prove the secret to a node and check that the node knows it too, within HANDSHAKE_TIMEOUT in all."""
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT
    try:
        hello = recv_exactly(sock, len(MAGIC) + NONCE, deadline)
    except (ConnectionResetError, TimeoutError) as exc:
        raise ProtocolError(f"no leaderless greeting from {_peer(sock)}") from exc
    if hello[:len(MAGIC)] != MAGIC:
        if hello[:3] == MAGIC[:3]:
            raise ProtocolError(f"{_peer(sock)} speaks leaderless protocol {hello[:4]!r}, this release "
                                f"{MAGIC!r}: every node and client of a cluster must run one release")
        raise ProtocolError(f"{_peer(sock)} is not a leaderless node (bad greeting)")
    server_nonce = hello[len(MAGIC):]
    client_nonce = os.urandom(NONCE)
    time_left(sock, deadline)
    sock.sendall(client_nonce + _mac(secret, b"c", server_nonce, client_nonce))
    try:
        verdict = recv_exactly(sock, 1, deadline)
        if verdict != b"\x01":
            raise AuthenticationFailed(f"{_peer(sock)} refused the cluster secret")
        proof = recv_exactly(sock, MAC, deadline)
    except (ConnectionResetError, TimeoutError) as exc:
        raise AuthenticationFailed(f"{_peer(sock)} closed the connection during authentication") from exc
    if not hmac.compare_digest(proof, _mac(secret, b"s", client_nonce, server_nonce)):
        raise AuthenticationFailed(f"{_peer(sock)} does not know the cluster secret")
    sock.settimeout(None)


def _peer(sock: socket.socket) -> str:
    try:
        name = sock.getpeername()
    except OSError:
        return "peer"
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else "peer"


_FRAME = msgspec.msgpack.Decoder(list[Union[WIRE_TYPES]])   # type: ignore[valid-type]
_encode_into = msgspec.msgpack.Encoder().encode_into
_to_wire = payloads.to_wire
_from_wire = payloads.from_wire
_pack_into = HEADER.pack_into
_WIRE = frozenset(WIRE_TYPES)


def encode_many(messages: list[Any]) -> bytes:
    """One frame holding ``messages`` (what one actor sends one peer while handling one batch):
    a 4-byte big-endian length, then a MessagePack array of ``[tag, field, ...]`` arrays."""
    buffer = bytearray(4)
    for message in messages:
        if type(message) not in _WIRE:
            raise TypeError(f"{type(message).__name__} never leaves its node: it has no wire tag")
    try:
        _encode_into([_to_wire(message) for message in messages], buffer, 4)
    except (TypeError, ValueError, OverflowError) as exc:      # a message of ours that cannot travel: a bug
        raise TypeError(f"cannot encode {[type(m).__name__ for m in messages]}: {exc}") from exc
    _pack_into(buffer, 0, len(buffer) - 4)
    return bytes(buffer)


def encode(message: Any) -> bytes:
    """A frame holding one message."""
    return encode_many([message])


def decode_frame(payload: bytes | memoryview) -> list[Any]:
    """The messages of one frame, each of a wire type with fields of their declared types; anything
    else (a tag no message has, a field of another type, a stored object that does not decode) raises
    ``ProtocolError``. Allocates at most a small multiple of the payload (msgspec preallocates no
    container from a declared length; the fuzz test in tests/test_wire.py measures the multiple)."""
    try:
        messages = _FRAME.decode(payload)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from exc
    except RecursionError as exc:
        raise ProtocolError("undecodable frame: nested too deeply") from exc
    return [_from_wire(message) for message in messages]


def decode(payload: bytes) -> Any:
    """The message of a one-message frame."""
    messages = decode_frame(payload)
    if len(messages) != 1:
        raise ProtocolError(f"expected one message, the frame holds {len(messages)}")
    return messages[0]


class FrameReader:
    """Splits a byte stream into decoded messages; one ``feed`` may yield many.

    ``max_frame``: the longest frame accepted (its length is checked before it is read)."""

    __slots__ = ("_buffer", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[Any]:
        self._buffer += data
        out = []
        buf = self._buffer
        pos = 0
        while len(buf) - pos >= 4:
            (size,) = HEADER.unpack_from(buf, pos)
            if size > self.max_frame:
                raise ProtocolError(f"frame of {size} bytes is over the {self.max_frame} byte limit")
            if len(buf) - pos - 4 < size:
                break
            with memoryview(buf) as view:
                out.extend(decode_frame(view[pos + 4:pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]
        return out
