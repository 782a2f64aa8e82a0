"""Frames between the pool and its workers, and the shared-memory status block (sans-IO).

A frame is `header_len:u32 payload_len:u32 header(orjson) payload(raw bytes)`: the events
of an invocation travel as the raw bytes received, never re-encoded. Headers are the
TypedDicts below: `*Frame` from the pool to a worker, `*Reply` back.

The status block (one small shared file per worker) is written by the worker and read by
the pool's watchdog without any message: which invocation is inside V8 since when, the last
frame the worker has read, the pool's "drop frames up to" mark for stolen invocations,
which event's handler is being started in a careful run (so a timeout names its offending
event; see worker.py), and one
how many contexts it has created (STPyV8 never frees a context's memory, so the pool
replaces a worker that made many), and one byte per invocation slot that the worker sets
before the invocation's first outgoing
request (so a killed worker's bystanders are re-run only when they sent nothing). Shared
memory outlives the worker: the pool reads it after a kill.
"""

from __future__ import annotations

import struct
from typing import Any, Literal, NotRequired, TypedDict

import orjson

_PREFIX = struct.Struct("<II")
PREFIX_SIZE = _PREFIX.size
STATUS = struct.Struct("<QQQQ")  # crossing seq, crossing start ns, last read seq, drop-up-to
_PROGRESS = struct.Struct("<QQ")  # invocation seq, index of the event whose handler starts
SLOTS = 4096  # invocations a worker can hold at once with a side-effect mark
_CREATED = struct.Struct("<Q")  # contexts the worker has created so far
_CREATED_AT = STATUS.size + _PROGRESS.size
# Response bytes the worker has received for fetches, in all: growth the host may have made.
_RECEIVED = struct.Struct("<Q")
_RECEIVED_AT = _CREATED_AT + _CREATED.size
_SLOTS_AT = _RECEIVED_AT + _RECEIVED.size
STATUS_SIZE = _SLOTS_AT + SLOTS
# Progress index meaning "the function's script is being loaded" (no event started yet).
LOADING = 2**32
# Progress index meaning "inside V8, but not starting one known event's handler".
UNKNOWN = 2**32 + 1
NO_SLOT = -1


class EgressFrame(TypedDict):
    """The egress settings of `EgressConfig`, as JSON."""

    allow: list[str]
    https_proxy: str | None
    http_proxy: str | None
    no_proxy: list[str]
    ca_bundle: str | None
    proxy_checks_names: bool
    max_response_bytes: int
    max_request_bytes: int
    max_redirects: int
    max_connections: int


class InitFrame(TypedDict):
    """First frame to a new worker: its egress policy and context cache size."""

    op: Literal["init"]
    egress: EgressFrame
    max_contexts: int


class EvictFrame(TypedDict):
    """Drop a context (its globals and cache)."""

    op: Literal["evict"]
    key: str


class HandlersFrame(TypedDict):
    """Load a context if needed and list the handlers its code defines."""

    op: Literal["handlers"]
    id: int
    key: str
    code: str
    deadline: float
    tenant: str  # whose code (the pool's quarantine and stall tally; the worker ignores it)


class RunFrame(TypedDict):
    """Run an invocation; the payload is the JSON array of its events."""

    op: Literal["run"]
    id: int
    key: str
    code: str
    deadline: float  # time.monotonic() of the pool (same clock in the worker)
    settings: str  # JSON object
    batch: bool
    count: int  # events in the payload: the number of results the report must carry
    secrets: list[str]  # redacted from everything the report carries out
    keep: bool  # keep return values and request/response bodies (previews)
    log_cap: int
    fresh: bool  # drop the context afterwards (previews)
    slot: int  # side-effect byte of this invocation in the status block, or NO_SLOT
    memory_limit: int  # bytes of responses the invocation may hold
    careful: bool  # start each handler in its own crossing, recording which one runs
    trace_headers: list[list[str]]  # [name, value] added to each request lacking a traceparent
    tenant: str  # whose instances share a share of the fetch connections ("" for none)


class ReadyReply(TypedDict):
    """Sent once by a worker when it is ready for frames."""

    ready: Literal[1]


class DroppedReply(TypedDict):
    """The worker did not run a frame the pool moved elsewhere."""

    id: int
    dropped: Literal[1]


class HandlersReply(TypedDict):
    """The handlers a context's code defines."""

    id: int
    handlers: list[str]


class RunReply(TypedDict):
    """An invocation's checked report: per-event results, logs, request traces."""

    id: int
    results: list[Any]  # 0 finished, 2 unfinished, or {name, message, stack, cls}
    logs: list[list[str]]
    logs_dropped: int
    requests: list[dict[str, Any]]  # request traces (see results.py)
    values: NotRequired[list[Any]]
    batch_value: NotRequired[Any]
    # The context broke the runtime's contract (its report was rejected): every event fails.
    rejected: NotRequired[str]
    # A bug in the worker: every event fails with a generic error (details in its log).
    internal: NotRequired[str]


def encode_frame(header: Any, payload: bytes = b"") -> bytes:
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


def write_created(buf: Any, count: int) -> None:
    """Record (worker side) how many contexts the worker has created."""
    _CREATED.pack_into(buf, _CREATED_AT, count)


def read_created(buf: Any) -> int:
    """Read how many contexts the worker has created."""
    return _CREATED.unpack_from(buf, _CREATED_AT)[0]


def write_received(buf: Any, total: int) -> None:
    """Record (worker side) the response bytes received for fetches so far, in all."""
    _RECEIVED.pack_into(buf, _RECEIVED_AT, total)


def read_received(buf: Any) -> int:
    """Read the response bytes the worker has received for fetches so far, in all."""
    return _RECEIVED.unpack_from(buf, _RECEIVED_AT)[0]


def mark_sent(buf: Any, slot: int) -> None:
    """Record (worker side) that the invocation in `slot` is about to send a request."""
    if 0 <= slot < SLOTS:
        buf[_SLOTS_AT + slot] = 1


def clear_slot(buf: Any, slot: int) -> None:
    """Reset a slot (pool side) before giving it to a new invocation."""
    buf[_SLOTS_AT + slot] = 0


def has_sent(buf: Any, slot: int) -> bool:
    """Tell whether the invocation in `slot` may have sent a request (no slot: assume so)."""
    return not 0 <= slot < SLOTS or buf[_SLOTS_AT + slot] != 0
