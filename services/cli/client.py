"""What every CLI command shares: the token, stubs, pages, output, errors."""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
import typer
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from eventfn_api.registry.v1 import registry_pb2, registry_pb2_grpc
from services.cli.context import context_file, load_context
from services.common import names
from services.common.printable import printable
from services.runtime.model import HANDLER_NAMES

# Piped output keeps whole ids on one line, so scripts can grep them.
out = Console(width=None if sys.stdout.isatty() else 250)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 250)
T = TypeVar("T")


def plain(value: object) -> str:
    """Return text from a server or an event as a terminal may show it: each control
    character as `\\xNN` (`\\uNNNN`), never acted on. Function output, event fields and
    error messages are anyone's to write."""
    return printable(str(value), keep="\n\t")


def safe(value: object) -> str:
    """Return `plain(value)` escaped for Rich markup, to put into a markup string: `[link=…]`
    or a stray `[/]` in a tenant's text is shown, never interpreted."""
    return escape(plain(value))


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit with status 1."""
    # Soft wrap: a long line (a path, a hint) stays one line when piped, for scripts and grep.
    err.print(f"[red]error:[/] {safe(message)}", highlight=False, soft_wrap=True)
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


def token(
    key: str = "token",
    missing: str = "no token: set EVENTFN_TOKEN, or start the platform with `make up` (it "
    "stores the admin token), or add one with `eventfn workspaces use --token …`",
) -> str:
    """Return the bearer token to use: EVENTFN_TOKEN, else the context's `key` (by default
    the current token; `admin_token` is the bootstrap token `up` stored)."""
    value = os.environ.get("EVENTFN_TOKEN") or load_context().get(key)
    if not value:
        fail(missing)
    return value


def metadata() -> tuple[tuple[str, str], ...]:
    """Return call metadata carrying the bearer token."""
    return (("authorization", f"Bearer {token()}"),)


# A function's code may be 5 MB, and answers carry it: gRPC's default limit (4 MiB) is not
# enough; the services send up to 64 MiB.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


@contextmanager
def stub(service: str, factory: Callable[[grpc.Channel], T]) -> Iterator[T]:
    """Open a channel to a service and yield a stub; turn RPC errors into one-line messages."""
    with grpc.insecure_channel(address(service), options=CHANNEL_OPTIONS) as channel:
        try:
            yield factory(channel)
        except grpc.RpcError as error:
            explain(error)


def registry() -> Any:
    """Open the registry stub (a context manager turning RPC errors into one-line messages)."""
    return stub("registry", registry_pb2_grpc.RegistryStub)


def whoami() -> Any:
    """Return the caller (WhoAmI), asked once per token and registry."""
    return _whoami(token(), address("registry"))


@functools.cache
def _whoami(secret: str, registry_address: str) -> Any:
    with stub("registry", registry_pb2_grpc.RegistryStub) as r:
        return r.WhoAmI(
            registry_pb2.WhoAmIRequest(), metadata=(("authorization", f"Bearer {secret}"),)
        )


def workspace() -> str:
    """Return the name of the token's workspace, "workspaces/ws_…"."""
    return whoami().workspace.name


# The id prefixes the registry gives, and the kinds of resource they name.
ID_KINDS = {
    "src": names.SOURCE,
    "fn": names.FUNCTION,
    "ins": names.INSTANCE,
    "mem": names.MEMBER,
    "tok": names.TOKEN,
}


def name(value: str, kind: names.Kind) -> str:
    """Return the resource name of an id (`fn_…`) or a name given on the command line."""
    if "/" in value:
        return value
    if ID_KINDS.get(value.split("_", 1)[0]) is not kind:
        fail(
            f"{value!r} is not {a_or_an(kind.word)} id ({kind.word} ids look like {example(kind)})"
        )
    return kind.name(names.last(workspace()), value)


def a_or_an(word: str) -> str:
    """Return a word after its indefinite article: "an instance", "a function", "a user"."""
    sounds_like_a_vowel = word[:1].lower() in "aeiou" and not word.lower().startswith(
        ("eu", "one", "uni", "use", "usa")
    )
    return f"{'an' if sounds_like_a_vowel else 'a'} {word}"


def example(kind: names.Kind) -> str:
    """Return what an id of a kind looks like."""
    prefix = next(p for p, k in ID_KINDS.items() if k is kind)
    return f"{prefix}_…"


def version_name(function: str, version: str) -> str:
    """Return the name of a version (`ver_…` or a name) of a function (id or name)."""
    if "/" in version:
        return version
    return f"{name(function, names.FUNCTION)}/versions/{version}"


def short(resource_name: str) -> str:
    """Return the id a resource name ends with, for tables and messages."""
    return names.last(resource_name)


def pages(call: Callable[..., Any], request: Message, field: str) -> Iterator[Any]:
    """Yield every item of a paged List call, page after page."""
    while True:
        resp = call(request, metadata=metadata())
        yield from getattr(resp, field)
        if not resp.next_page_token:
            return
        request.page_token = resp.next_page_token  # type: ignore[attr-defined]


def how_to_get_a_token() -> str:
    """Say where the token the CLI sent came from, and how to use a working one instead."""
    owner = "the owner token `eventfn workspaces create` printed"
    if os.environ.get("EVENTFN_TOKEN"):
        return (
            f"it came from EVENTFN_TOKEN: set it to a working token ({owner}), or unset it "
            f"to use the tokens in {context_file()}"
        )
    return (
        f"use a working one: `eventfn workspaces use admin` (the bootstrap admin token "
        f"`make up` stored in {context_file()}), or `eventfn workspaces use --token efn_…` "
        f"with {owner}"
    )


# The API's fields the commands set with a flag of another name.
FIELD_FLAGS = {
    "instance.batch_size": "--batch-size",
    "instance.batch_wait": "--batch-wait-ms",
    "instance.timeout": "--timeout-ms",
    "instance.retry_window": "--retry-window-seconds",
    "instance.retry_max_delay": "--retry-max-delay-seconds",
    "instance.filters": "--filter",
    "instance.display_name": "--name",
}
_SETTING = re.compile(r"^(?:deploy_settings\[[^\]]*\]\.)?settings\.(.+)$")
_FILTER = re.compile(r"^instance\.filters\[(\d+)\]$")


def flag_of(field: str) -> str:
    """Name a bad field as the CLI's user set it: its flag (`--set name=…` for a setting),
    or the field itself when no flag sets it."""
    if (setting := _SETTING.match(field)) is not None:
        return f"--set {setting.group(1)}=…"
    if (nth := _FILTER.match(field)) is not None:
        return f"--filter #{int(nth.group(1)) + 1}"
    return FIELD_FLAGS.get(field, field)


def explain(error: grpc.RpcError) -> NoReturn:
    """Print an RPC error as people read it: code, message, and each bad field."""
    code = error.code()  # type: ignore[attr-defined]
    details = error.details() or ""  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE:
        fail(f"the service is not reachable ({details}); is the platform up? (`make up`)")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        # The registry's own hint (after "; ") speaks to any client; the CLI knows where its
        # token came from and where a working one is.
        fail(f"unauthenticated: {details.split('; ', 1)[0]}; {how_to_get_a_token()}")
    lines = [f"{code.name.lower().replace('_', ' ')}: {details}"]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                lines += [f"  {flag_of(v.field)}: {v.description}" for v in bad.field_violations]
    if len(lines) > 2 or (len(lines) == 2 and lines[1].strip() not in lines[0]):
        fail("\n".join(lines))
    fail(lines[0])


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as a table."""
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[Text("" if v is None else plain(v)) for v in r])
    out.print(t)


def request_line(request: Any) -> str:
    """Return an outgoing request (a RequestTrace) as `METHOD url → status (ms)`, or its error."""
    answer = request.status or request.error or "no response"
    return f"{request.method} {request.url} → {answer} ({request.duration.ToMilliseconds()} ms)"


def print_logs_and_requests(logs: str, requests: Iterable[Any]) -> None:
    """Print an invocation's console output and outgoing requests, indented under it."""
    if logs:
        shown = plain(logs).replace("\n", "\n        ")
        out.print("  logs: " + shown, markup=False, highlight=False)
    for request in requests:
        out.print(f"  {plain(request_line(request))}", markup=False, highlight=False)


def as_json(message: Message) -> None:
    """Print a message as JSON, for scripts."""
    from google.protobuf import json_format

    sys.stdout.write(json_format.MessageToJson(message) + "\n")


def as_json_list(messages: Iterable[Message]) -> None:
    """Print messages as one JSON array (proto JSON names), for scripts."""
    from google.protobuf import json_format

    items = [json_format.MessageToDict(m) for m in messages]
    sys.stdout.write(json.dumps(items, indent=2, ensure_ascii=False) + "\n")


def when(ts: Any) -> str:
    """Format a Timestamp for tables in local time with its UTC offset (empty when unset)."""
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=UTC).astimezone().isoformat(sep=" ", timespec="seconds")


def read_text(path: Path, what: str) -> str:
    """Read a UTF-8 text file, or fail naming it (and, when it is not UTF-8, the bad byte)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        fail(f"cannot read {what} {path}: {error.strerror}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        fail(
            f"{what} {path} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
            f"{error.start}); save it as UTF-8"
        )


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file or fail with a clear message."""
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as error:
        fail(f"{what} {path} is not valid JSON: {error.msg} at line {error.lineno}")


def read_code(path: Path) -> str:
    """Read a handler file, warning when it defines none of the handlers by name."""
    code = read_text(path, "handler file")
    if (warning := missing_handlers(code)) is not None:
        err.print(f"warning: {path.name} {warning}", markup=False, highlight=False)
    return code


def missing_handlers(code: str) -> str | None:
    """Say why no handler can be defined when no handler's name appears in the code (its
    events would all be discarded as EventNotSupported); None when one does."""
    if any(re.search(rf"\b{name}\b", code) for name in HANDLER_NAMES):
        return None
    wanted = {name.lower(): name for name in HANDLER_NAMES}
    near = sorted({w for w in re.findall(r"\bon\w+", code, re.IGNORECASE) if w.lower() in wanted})
    hint = (
        f" ({', '.join(f'{w} should be {wanted[w.lower()]}' for w in near)}: the names are "
        "case-sensitive)"
        if near
        else ""
    )
    return (
        f"defines no handler ({', '.join(HANDLER_NAMES)}){hint}: every event would be "
        "discarded as EventNotSupported"
    )
