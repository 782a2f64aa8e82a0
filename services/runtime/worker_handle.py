"""The pool's records of its workers and in-flight invocations."""

from __future__ import annotations

import asyncio
import mmap
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from .protocol import STATUS_SIZE

_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Lost:
    """Why an invocation's worker went away, and what the pool knows about the offender."""

    reason: str  # "timeout" | "memory" | "crash"
    offender: int | None = None  # the event whose handler was starting, when known
    loading: bool = False  # it died while loading the function's script


# A worker's answer meaning "send this invocation again" (moved, dropped, or bystander).
REQUEUE = object()


@dataclass(eq=False)
class Pending:
    """An invocation sent to a worker and not answered yet."""

    seq: int
    key: str
    deadline: float
    future: asyncio.Future[Any]


@dataclass(eq=False)
class WorkerHandle:
    """The pool's view of one worker process."""

    index: int
    proc: asyncio.subprocess.Process
    status: mmap.mmap
    status_path: str
    inflight: dict[int, Pending] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dead: bool = False
    stalled_key: str | None = None
    stalled: bool = False
    seen_crossing: tuple[int, int] = (0, 0)
    rss_base: int = 0
    reader: asyncio.Task[None] | None = None

    def rss(self) -> int:
        """Return the worker's resident memory in bytes (0 if it is gone)."""
        try:
            with open(f"/proc/{self.proc.pid}/statm", "rb") as fh:
                return int(fh.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return 0

    @property
    def usable(self) -> bool:
        """Tell whether new invocations may be sent to this worker."""
        return not self.dead and not self.stalled and self.ready.is_set()


def status_block() -> tuple[mmap.mmap, str]:
    """Create a worker's status block: a tiny shared file in memory (tmpfs)."""
    # A tiny file in memory (tmpfs) shared with the worker; tmpfs writes never block.
    fd, path = tempfile.mkstemp(
        prefix="eventfn-worker-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    os.write(fd, b"\0" * STATUS_SIZE)
    status = mmap.mmap(fd, STATUS_SIZE)
    os.close(fd)
    return status, path
