"""Single-node storage of leaderless: version sets, the record codec and the store.

Further modules, imported by name: `storage.crdts` (server-merged data types),
`storage.hlc` (hybrid logical clock), `storage.objects` (what a key holds, whatever its
bucket type), `storage.merkle` (anti-entropy hash trees), `storage.digests` (the key and
object hashes of those trees).

Pure and local: nothing here imports `actors`, opens sockets or starts actors.
"""

from storage.codec import (FORMAT_CRDT, FORMAT_DVV, FORMAT_TYPED, FORMAT_V1, CodecError, decode_object, dumps,
                           encode_object, safe_loads)
from storage.store import Hint, LmdbStore, MemoryStore, Store, StoreError, StoreFull, open_store
from storage.versions import (
    EMPTY,
    Context,
    DVVSet,
    context_descends,
    descends,
    equal,
    join,
    merge_contexts,
    size,
    sync,
    sync_all,
    update,
    values,
)

__all__ = [
    "CodecError",
    "Context",
    "DVVSet",
    "EMPTY",
    "FORMAT_CRDT",
    "FORMAT_DVV",
    "FORMAT_TYPED",
    "FORMAT_V1",
    "Hint",
    "LmdbStore",
    "MemoryStore",
    "Store",
    "StoreError",
    "StoreFull",
    "context_descends",
    "decode_object",
    "descends",
    "dumps",
    "encode_object",
    "equal",
    "join",
    "merge_contexts",
    "open_store",
    "safe_loads",
    "size",
    "sync",
    "sync_all",
    "update",
    "values",
]
