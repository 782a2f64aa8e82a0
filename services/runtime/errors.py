"""Domain exceptions of the function runtime."""

from __future__ import annotations


class RuntimeFailure(Exception):
    """Base class of the function runtime's errors."""


class PoolClosedError(RuntimeFailure):
    """The runtime pool is not running: call start() first, or it was closed."""


class WorkerStartError(RuntimeFailure):
    """A runtime worker process could not be started."""

    def __init__(self, message: str) -> None:
        super().__init__(f"function runtime worker failed to start: {message}")


class WorkerLost(RuntimeFailure):
    """A worker died while an invocation was in it (killed for a limit, or crashed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidInvocation(RuntimeFailure):
    """An invocation's inputs are unusable (events not a JSON array, timeout out of range)."""
