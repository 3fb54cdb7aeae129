"""Bucket options, resolved in one place: which bucket a stored key is in, and that bucket's n/r/w.

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
from .messages import BucketProps

SEPARATOR = "\x00"


def bucket_of(stored_key: str) -> str:
    """The bucket a stored key belongs to (``""``: the default bucket)."""
    bucket, sep, _ = stored_key.partition(SEPARATOR)
    return bucket if sep else ""


def storage_key(bucket: str, key: str, max_bytes: int) -> str:
    """The key as replicas store it: the default bucket's keys as they are, others prefixed."""
    if not bucket:
        return key
    full = f"{bucket}{SEPARATOR}{key}"
    if len(full.encode("utf-8")) > max_bytes:
        raise InvalidRequest(f"bucket name and key together are longer than {max_bytes} bytes")
    return full


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
