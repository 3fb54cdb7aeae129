"""The sizes a request may have, in one place, and the checks a client runs before it sends one.

    MAX_KEY_BYTES    511 bytes: a key as replicas store it (utf-8; in a named bucket, the
                     bucket's name, a NUL byte and the key), LMDB's largest key
    MAX_VALUE_BYTES  16 MiB: one value (the coordinator refuses larger ones)
    MAX_REQUEST_FRAME 20 MiB: one frame from a client (a node closes a connection sending a larger one)
    MAX_FRAME        64 MiB: one frame between nodes, or from a node to a client

A client checks keys and values before sending (``check_key``, ``check_value``), so a request
over a limit fails at once with ``InvalidRequest`` naming the limit, not with a closed
connection. Nodes check again: a client is not trusted to have done it.
"""

from __future__ import annotations

from typing import Any

from storage.store import MAX_KEY_BYTES

from .errors import InvalidRequest
from .wire import MAX_FRAME, MAX_REQUEST_FRAME

MAX_VALUE_BYTES = 16 << 20
"""A value's largest size: under MAX_REQUEST_FRAME, so a request with its context always fits a frame."""

__all__ = ["MAX_FRAME", "MAX_KEY_BYTES", "MAX_REQUEST_FRAME", "MAX_VALUE_BYTES", "check_key", "check_value"]


def check_key(bucket: str, key: Any) -> None:
    """Raise ``InvalidRequest`` unless ``key`` (in ``bucket``; "" is the default bucket) is a key a node takes:
    a non-empty string without NUL whose stored form is at most MAX_KEY_BYTES utf-8 bytes."""
    if not isinstance(key, str) or not key:
        raise InvalidRequest(f"key must be a non-empty string, got {key!r:.60}")
    if "\x00" in key:
        raise InvalidRequest("key must not contain NUL characters")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidRequest("key is not valid unicode (it holds a lone surrogate)") from exc
    if size > MAX_KEY_BYTES:
        raise InvalidRequest(f"key is {size} bytes (utf-8), over the limit of MAX_KEY_BYTES={MAX_KEY_BYTES}")
    if bucket:
        if not isinstance(bucket, str):
            raise InvalidRequest(f"bucket must be a string, got {bucket!r:.60}")
        try:
            full = len(bucket.encode("utf-8")) + 1 + size
        except UnicodeEncodeError as exc:
            raise InvalidRequest("bucket name is not valid unicode (it holds a lone surrogate)") from exc
        if full > MAX_KEY_BYTES:
            raise InvalidRequest(f"bucket name and key together are {full} bytes (utf-8, with the NUL between "
                                 f"them), over the limit of MAX_KEY_BYTES={MAX_KEY_BYTES}")


def check_value(value: Any) -> None:
    """Raise ``InvalidRequest`` if ``value`` (bytes, or None for a delete) is larger than MAX_VALUE_BYTES."""
    if value is None:
        return
    size = value.nbytes if isinstance(value, memoryview) else len(value)
    if size > MAX_VALUE_BYTES:
        raise InvalidRequest(f"value is {size} bytes, over the limit of MAX_VALUE_BYTES={MAX_VALUE_BYTES} "
                             f"({MAX_VALUE_BYTES >> 20} MiB)")
