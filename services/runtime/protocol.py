"""Frames between the pool and its workers, and the shared-memory status block (sans-IO).

A frame is `header_len:u32 payload_len:u32 header(orjson) payload(raw bytes)`: the events
of an invocation travel as the raw bytes received, never re-encoded.
The status block (one small shared file per worker) is written by the worker and read by
the pool's watchdog without any message: which invocation is inside V8 since when, the last
frame the worker has read, the pool's "drop frames up to" mark for stolen invocations, and
which event's handler is being started (so a timeout can name its offending event).
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

_PREFIX = struct.Struct("<II")
PREFIX_SIZE = _PREFIX.size
STATUS = struct.Struct("<QQQQ")  # crossing seq, crossing start ns, last read seq, drop-up-to
_PROGRESS = struct.Struct("<QQ")  # invocation seq, index of the event whose handler starts
STATUS_SIZE = STATUS.size + _PROGRESS.size
# Progress index meaning "the function's script is being loaded" (no event started yet).
LOADING = 2**32


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """Encode one frame."""
    head = orjson.dumps(header)
    return _PREFIX.pack(len(head), len(payload)) + head + payload


def frame_sizes(prefix: bytes) -> tuple[int, int]:
    """Return (header length, payload length) from a frame's 8-byte prefix."""
    head, payload = _PREFIX.unpack(prefix)
    return head, payload


def read_status(buf: Any) -> tuple[int, int, int, int]:
    """Read the status block: (crossing seq, crossing start ns, last read, drop up to)."""
    return STATUS.unpack_from(buf, 0)


def read_progress(buf: Any) -> tuple[int, int]:
    """Read (invocation seq, event index) of the last handler start the worker recorded."""
    return _PROGRESS.unpack_from(buf, STATUS.size)


def write_progress(buf: Any, seq: int, index: int) -> None:
    """Record that invocation `seq` is starting the handler of event `index`."""
    _PROGRESS.pack_into(buf, STATUS.size, seq, index)


def write_crossing(buf: Any, seq: int, start_ns: int) -> None:
    """Mark that invocation `seq` entered V8 at `start_ns` (seq 0: none)."""
    struct.pack_into("<QQ", buf, 0, seq, start_ns)


def write_last_read(buf: Any, seq: int) -> None:
    """Record the last frame the worker has read."""
    struct.pack_into("<Q", buf, 16, seq)


def write_drop_up_to(buf: Any, seq: int) -> None:
    """Ask the worker to drop (not run) frames numbered up to `seq` it has not read yet."""
    struct.pack_into("<Q", buf, 24, seq)
