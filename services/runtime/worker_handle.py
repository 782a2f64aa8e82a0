"""The pool's records of its workers and in-flight invocations."""

from __future__ import annotations

import asyncio
import mmap
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from .protocol import NO_SLOT, SLOTS, STATUS_SIZE, clear_slot

_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Lost:
    """Why an invocation's worker went away, and what the pool knows about the offender."""

    # "timeout" | "memory" | "crash" | "bystander" (had sent requests) | "busy" (moved off
    # stalled workers too often: never ran)
    reason: str
    offender: int | None = None  # the event whose handler was starting (careful runs)
    loading: bool = False  # it died while loading the function's script
    sent: bool = True  # it may have sent requests (running it again could repeat them)


# A worker's answer meaning "send this invocation again": its worker died before it ran (one
# of the invocation's attempts).
REQUEUE = object()
# The same, for an invocation moved off a stalled worker before it ran: no attempt of its own
# (another tenant's long crossings must not make it fail).
MOVED = object()


@dataclass(eq=False)
class Pending:
    """An invocation sent to a worker and not answered yet."""

    seq: int
    key: str
    deadline: float
    future: asyncio.Future[Any]
    slot: int = NO_SLOT  # its side-effect byte in the worker's status block
    tenant: str = ""  # whose crossings these are (the worker time it takes is counted)


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
    retiring: bool = False  # being replaced: finishes what it has, takes nothing new
    stalled_key: str | None = None
    stalled: bool = False
    reader: asyncio.Task[None] | None = None
    free_slots: list[int] = field(default_factory=lambda: list(range(SLOTS - 1, -1, -1)))

    def take_slot(self) -> int:
        """Give a new invocation a cleared side-effect slot (NO_SLOT when all are taken)."""
        if not self.free_slots:
            return NO_SLOT
        slot = self.free_slots.pop()
        clear_slot(self.status, slot)
        return slot

    def release(self, pending: Pending) -> None:
        """Take an answered invocation off the worker and free its slot."""
        self.inflight.pop(pending.seq, None)
        if pending.slot != NO_SLOT and not self.dead:
            self.free_slots.append(pending.slot)
            pending.slot = NO_SLOT

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
        return not self.dead and not self.stalled and not self.retiring and self.ready.is_set()


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
