"""What every CLI command shares: where the platform is, the token, stubs, output, errors."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
import typer
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rich.console import Console
from rich.table import Table

# Piped output keeps whole ids on one line, so scripts can grep them.
out = Console(width=None if sys.stdout.isatty() else 250)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 250)
T = TypeVar("T")


def state_dir() -> Path:
    """Return the state dir (EVENTFN_STATE_DIR, default `.eventfn`)."""
    return Path(os.environ.get("EVENTFN_STATE_DIR", ".eventfn"))


def context_file() -> Path:
    """Return the CLI context file written by `eventfn up`."""
    return state_dir() / "cli.json"


def load_context() -> dict[str, Any]:
    """Read the CLI context (registry address, current token); empty when there is none."""
    path = context_file()
    return json.loads(path.read_text()) if path.exists() else {}


def save_context(**changes: Any) -> None:
    """Update the CLI context file (mode 600: it holds a token)."""
    current = load_context() | changes
    path = context_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(current, f, indent=2)


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit with status 1."""
    err.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)


def address(service: str) -> str:
    """Return the gRPC address of a service (env EVENTFN_<SERVICE>_ADDR, else the context)."""
    env = os.environ.get(f"EVENTFN_{service.upper()}_ADDR")
    if env:
        return env
    found = load_context().get("addresses", {}).get(service)
    if not found:
        fail(
            f"don't know where the {service} is: run `make up` (or `eventfn up`) first, "
            f"or set EVENTFN_{service.upper()}_ADDR"
        )
    return found


def token() -> str:
    """Return the bearer token to use (EVENTFN_TOKEN, else the context's current token)."""
    value = os.environ.get("EVENTFN_TOKEN") or load_context().get("token")
    if not value:
        fail("no token: set EVENTFN_TOKEN or run `make up`, which stores the admin token")
    return value


def metadata() -> tuple[tuple[str, str], ...]:
    """Return call metadata carrying the bearer token."""
    return (("authorization", f"Bearer {token()}"),)


@contextmanager
def stub(service: str, factory: Callable[[grpc.Channel], T]) -> Iterator[T]:
    """Open a channel to a service and yield a stub; turn RPC errors into one-line messages."""
    with grpc.insecure_channel(address(service)) as channel:
        try:
            yield factory(channel)
        except grpc.RpcError as error:
            explain(error)


def explain(error: grpc.RpcError) -> NoReturn:
    """Print an RPC error as people read it: code, message, and each bad field."""
    code = error.code()  # type: ignore[attr-defined]
    details = error.details() or ""  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE:
        fail(f"the service is not reachable ({details}); is the platform up? (`make up`)")
    lines = [f"{code.name.lower().replace('_', ' ')}: {details}"]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                lines += [f"  {v.field}: {v.description}" for v in bad.field_violations]
    if len(lines) > 2 or (len(lines) == 2 and lines[1].strip() not in lines[0]):
        fail("\n".join(lines))
    fail(lines[0])


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as a table."""
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[("" if v is None else str(v)) for v in r])
    out.print(t)


def as_json(message: Message) -> None:
    """Print a message as JSON, for scripts."""
    from google.protobuf import json_format

    sys.stdout.write(json_format.MessageToJson(message) + "\n")


def when(ts: Any) -> str:
    """Format a Timestamp for tables (empty when unset)."""
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file or fail with a clear message."""
    try:
        return json.loads(path.read_text())
    except OSError as error:
        fail(f"cannot read {what} {path}: {error.strerror}")
    except json.JSONDecodeError as error:
        fail(f"{what} {path} is not valid JSON: {error.msg} at line {error.lineno}")


def read_code(path: Path) -> str:
    """Read a handler file."""
    try:
        return path.read_text()
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")
