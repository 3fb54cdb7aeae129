"""Options resolved in one place: a stored key's bucket and that bucket's n/r/w, and the validation of a
request's own key, value, context, condition and timeout.

Every path that decides who holds a key (coordinator, read repair, hints, handoff,
anti-entropy, tombstone reaping, membership changes) takes the key's n from here, so
a bucket's own n cannot be replaced by the cluster's by accident. A key of the default
bucket ``""`` is stored as it is; a key of bucket ``b`` is stored as ``b\\0key`` (user
keys and bucket names cannot hold NUL).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import InvalidRequest
from .limits import MAX_KEY_BYTES, MAX_VALUE_BYTES
from .messages import BucketProps

SEPARATOR = "\x00"


def bucket_of(stored_key: str) -> str:
    """The bucket a stored key belongs to (``""``: the default bucket)."""
    bucket, sep, _ = stored_key.partition(SEPARATOR)
    return bucket if sep else ""


def storage_key(bucket: str, key: str) -> str:
    """The key as replicas store it: the default bucket's keys as they are, others prefixed."""
    if not bucket:
        return key
    full = f"{bucket}{SEPARATOR}{key}"
    if len(full.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidRequest(f"bucket name and key together are longer than {MAX_KEY_BYTES} bytes")
    return full


# --- a request's own options, validated once (one error per violation) -----------------------

MAX_TIMEOUT = 600.0


def validate_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidRequest(f"key must be a non-empty string, got {key!r:.60}")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidRequest("key is not valid unicode (it holds a lone surrogate)") from exc
    if size > MAX_KEY_BYTES:
        raise InvalidRequest(f"key is longer than {MAX_KEY_BYTES} bytes")
    if "\x00" in key:
        raise InvalidRequest("key must not contain NUL characters")
    return key


def validate_value(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidRequest(f"value must be bytes, got {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidRequest(f"value is larger than {MAX_VALUE_BYTES} bytes")
    return bytes(value)


def validate_context(context: Any) -> tuple[tuple[str, int], ...]:
    if context is None or context == ():
        return ()
    try:
        pairs = tuple(sorted((a, c) for a, c in context))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest("context must be the context a read or write returned") from exc
    if any(not isinstance(a, str) or type(c) is not int or c < 1 for a, c in pairs) or \
            len({a for a, _ in pairs}) != len(pairs):
        raise InvalidRequest("context must be the context a read or write returned")
    return pairs


def validate_condition(condition: Any) -> tuple | None:
    if condition is None:
        return None
    if condition == ("if_absent",):
        return condition
    if isinstance(condition, tuple) and len(condition) == 2 and condition[0] == "if_context":
        return ("if_context", validate_context(condition[1]))
    raise InvalidRequest(f"unknown write condition {condition!r:.60}")


def validate_timeout(timeout: Any, default: float) -> float:
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise InvalidRequest(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT}], got {timeout!r:.40}")
    return float(timeout)



def bucket_props(buckets: Mapping[str, BucketProps], defaults: BucketProps, name: Any) -> BucketProps | None:
    """A bucket's properties: the default bucket's are the cluster's; None for a bucket not known here."""
    if name == "" or name is None:
        return defaults
    return buckets.get(name) if isinstance(name, str) else None


def n_for_key(buckets: Mapping[str, BucketProps], defaults: BucketProps, stored_key: str) -> int | None:
    """How many replicas hold ``stored_key``: its bucket's n; None while that bucket is not known here
    (gossip has not brought it yet), so that no repair path guesses."""
    props = bucket_props(buckets, defaults, bucket_of(stored_key))
    return None if props is None else props.n


def largest_n(buckets: Mapping[str, BucketProps], defaults: BucketProps) -> int:
    """The largest n in use: a cluster must keep at least that many members."""
    return max([defaults.n, *(props.n for props in buckets.values())])
