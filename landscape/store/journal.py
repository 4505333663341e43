"""A run's journal: an append-only file of flushes, each a self-checking record.

A flush appends one record (``append_record``) instead of rewriting the run's HDF5 file, so it
costs what it appends; the run's file takes the journal's rows at a compaction
(``runfile.RunFile``). A record is::

    b"LSJ1" | header length (u32) | payload length (u64) | CRC-32 of header + payload (u32)
    header: JSON (the block's structure; each array as [dtype, shape, offset, bytes])
    payload: the arrays' raw bytes, back to back

The block is ``RunLog.take_pending``'s: attributes, declarations and the new rows, plain data.
No pickle: a journal in a shared folder is data, never code. A record that a kill (or a full
disk) cut short, or any byte of it changed, fails its length or CRC check; ``read_records``
stops before it, so a reader sees every whole flush and nothing of a torn one.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

MAGIC = b"LSJ1"
HEAD = struct.Struct("<4sIQI")  # magic, header bytes, payload bytes, CRC-32
ARRAY = "$array"  # the JSON key of an array's reference into the payload


def encode(block: dict) -> bytes:
    """One record holding ``block`` (dicts, lists, str, numbers, bools, None, numpy arrays)."""
    arrays: list[bytes] = []
    offset = [0]

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            data = np.ascontiguousarray(value).tobytes()
            ref = {ARRAY: [value.dtype.str, list(value.shape), offset[0], len(data)]}
            arrays.append(data)
            offset[0] += len(data)
            return ref
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.dtype):
            return {"$dtype": value.str}
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return value

    header = json.dumps(plain(block), separators=(",", ":")).encode()
    payload = b"".join(arrays)
    crc = zlib.crc32(payload, zlib.crc32(header))
    return HEAD.pack(MAGIC, len(header), len(payload), crc) + header + payload


def decode(header: bytes, payload: bytes) -> dict:
    def value(node: Any) -> Any:
        if isinstance(node, dict):
            if ARRAY in node:
                dtype, shape, offset, size = node[ARRAY]
                return np.frombuffer(payload[offset:offset + size],
                                     dtype=np.dtype(dtype)).reshape(shape).copy()
            if "$dtype" in node:
                return np.dtype(node["$dtype"])
            return {k: value(v) for k, v in node.items()}
        if isinstance(node, list):
            return [value(v) for v in node]
        return node

    return value(json.loads(header))


def read_records(path: Path) -> tuple[list[dict], int]:
    """The whole records of a journal, and the bytes they take (the rest is a torn tail);
    a journal that does not exist holds none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    records, at = [], 0
    while at + HEAD.size <= len(data):
        magic, header_bytes, payload_bytes, crc = HEAD.unpack_from(data, at)
        start = at + HEAD.size
        end = start + header_bytes + payload_bytes
        if magic != MAGIC or end > len(data):
            break
        header, payload = data[start:start + header_bytes], data[start + header_bytes:end]
        if zlib.crc32(payload, zlib.crc32(header)) != crc:
            break
        records.append(decode(header, payload))
        at = end
    return records, at


def append_record(path: Path, record: bytes, pause: Callable[[], None] = lambda: None) -> None:
    """Append ``record`` to the journal at ``path``. A write that fails (a full disk, a file
    size limit) is cut back off, so the journal ends on a whole record; the ``OSError`` is
    raised. ``pause`` runs half-way through the record (a test hook: kills land inside)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            half = len(record) // 2
            _write_all(fd, record[:half])
            pause()
            _write_all(fd, record[half:])
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
