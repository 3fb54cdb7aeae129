"""A write-ahead log: durable appends of (key, record) batches, read back in order after a crash.

    wal = WriteAheadLog("/data/n1/store/wal.log")
    for entries in wal.replay():       # at open: the batches appended since the last reset
        ...
    wal.append([(b"key", b"record"), ...])   # returns once the batch is on disk (fdatasync)
    wal.reset()                        # once the batches are stored elsewhere, durably

A batch is one frame: payload length and CRC-32 (``>II``), then per entry the key
length and record length (``>HI``), the key, the record. A crash in the middle of an
append leaves a torn last frame; ``replay`` stops at the first frame that is short or
fails its checksum and cuts the file back to the last whole frame, so later appends
never follow garbage. An append that fails (a full disk) cuts the file back too, so
nothing of a refused batch can come back; if even that cut fails, the next append
makes it first (and is refused if it cannot), so no append ever follows the remains of
a refused one (a record's bytes could otherwise read as a frame at replay).
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from collections.abc import Iterable, Iterator

__all__ = ["WalFull", "WriteAheadLog"]

_FRAME = struct.Struct(">II")
_ENTRY = struct.Struct(">HI")


class WalFull(OSError):
    """The disk is full: the batch was not appended."""


class WriteAheadLog:
    def __init__(self, path: str) -> None:
        self.path = path
        created = not os.path.exists(path)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self._fd).st_size
        self._torn = False                # a failed append's bytes may lie past ``size``: cut them first
        if created:                       # the new name itself must survive a machine crash
            directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def replay(self) -> Iterator[list[tuple[bytes, bytes]]]:
        """Every whole batch in the order appended; the file is cut after the last whole one."""
        data = _read_all(self._fd, self.size)
        pos = 0
        while pos + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, pos)
            start = pos + _FRAME.size
            payload = data[start:start + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            yield _entries(payload)
            pos = start + length
        if pos != self.size:
            os.ftruncate(self._fd, pos)
            os.fsync(self._fd)
            self.size = pos

    def append(self, entries: Iterable[tuple[bytes, bytes]]) -> None:
        """Append one batch and wait until it is on disk. ``WalFull`` (nothing appended) on a full disk."""
        parts = []
        for key, record in entries:
            parts.append(_ENTRY.pack(len(key), len(record)))
            parts.append(key)
            parts.append(record)
        payload = b"".join(parts)
        frame = _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        start = self.size
        try:
            if self._torn:
                os.ftruncate(self._fd, start)
                self._torn = False
            view = memoryview(frame)
            written = 0
            while written < len(frame):
                written += os.pwrite(self._fd, view[written:], start + written)
            os.fdatasync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                self._torn = True
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise WalFull(exc.errno, f"no room to log a batch in {self.path}: {exc.strerror}") from exc
            raise
        self.size = start + len(frame)

    def reset(self) -> None:
        """Empty the log, durably (what it held is stored elsewhere now)."""
        os.ftruncate(self._fd, 0)
        self.size = 0                     # now, not after the sync: appends must start at 0 even if it fails
        self._torn = False
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    pos = 0
    while pos < size:
        chunk = os.pread(fd, min(size - pos, 1 << 24), pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


def _entries(payload: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    pos = 0
    while pos < len(payload):
        key_len, record_len = _ENTRY.unpack_from(payload, pos)
        pos += _ENTRY.size
        key = payload[pos:pos + key_len]
        pos += key_len
        out.append((key, payload[pos:pos + record_len]))
        pos += record_len
    return out
