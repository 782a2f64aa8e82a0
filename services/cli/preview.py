"""`eventfn preview`: run a function file on a test event in-process, like the editor's Run."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.cli.client import fail, plain, read_code, read_text, safe
from services.common.error_location import function_frames
from services.common.outcomes import NAME_OF
from services.runtime.config import EgressConfig, RuntimeConfig
from services.runtime.errors import InvalidInvocation
from services.runtime.model import EventOutcome, LogLine, OutcomeKind, RequestTrace
from services.runtime.preview import (
    PreviewError,
    PreviewResult,
    preview_in_process,
    sample_event,
)
from services.runtime.settings_schema import split_assignment


def _read_json_file(path: Path, what: str) -> bytes:
    text = read_text(path, f"{what} file")
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        fail(f"the {what} file {path} is not valid JSON: {exc}")
    return text.encode()


def _read_values(path: Path | None) -> dict[str, Any]:
    """Read test setting values: a JSON object (a settings schema is a list: say so)."""
    if path is None:
        return {}
    values = orjson.loads(_read_json_file(path, "settings"))
    if isinstance(values, list):
        fail(
            f"{path} holds a list, like a settings schema; --settings takes test values: "
            'a JSON object such as {"endpoint": "https://…", "apiKey": "…"}'
        )
    if not isinstance(values, dict):
        fail(f"{path} must hold a JSON object of setting values")
    return values


def _as_jsonable(result: PreviewResult) -> dict[str, Any]:
    return dataclasses.asdict(result)


def _print_human(result: PreviewResult, console: Console) -> None:
    colour = "green" if result.outcome == OutcomeKind.DELIVERED else "red"
    console.print(
        f"[bold {colour}]{result.outcome.value}[/] in {result.duration_ms:.1f} ms"
        + (f"  ({len(result.outcomes)} events)" if len(result.outcomes) > 1 else "")
    )
    if result.error is not None:
        console.print(f"[bold red]{safe(result.error.type)}[/]: ", end="")
        console.print(plain(result.error.message), markup=False, highlight=False)
        for frame in function_frames(result.error.stack or ""):
            console.print(f"    {plain(frame)}", style="dim", markup=False, highlight=False)
    if result.result is not None:
        console.print("[bold]Result[/]")
        console.print_json(orjson.dumps(result.result).decode())
    console.print(
        "[bold]Logs[/]" + (" [yellow](truncated at 4 KB)[/]" if result.logs_truncated else "")
    )
    if not result.logs:
        console.print("  (none)", style="dim")
    for line in result.logs:
        console.print(f"  {line.level:<5} {plain(line.message)}", markup=False, highlight=False)
    if result.requests:
        table = Table(title="Requests", show_lines=False)
        for column in ("method", "url", "status", "ms", "response"):
            table.add_column(column)
        for r in result.requests:
            body = (r.response_body or r.error or "")[:200]
            cells = (r.method, r.url, "" if r.status is None else r.status, f"{r.duration_ms:.1f}")
            table.add_row(*(Text(plain(cell)) for cell in (*cells, body)))
        console.print(table)


def _preview_remote(
    code: str, payload: bytes, values: object, function_id: str = ""
) -> PreviewResult:
    """Run the preview on the running executor; return its answer as a local run's.

    Named a function, the preview takes its latest version's setting definitions, so the
    values of its encrypted settings are redacted from the answer as from every run's.
    """
    from google.protobuf import struct_pb2

    from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
    from eventfn_api.registry.v1 import registry_pb2 as pb
    from services.cli.client import metadata, registry, stub
    from services.cli.client import name as cli_name
    from services.cli.settings_input import version_settings
    from services.common import names

    settings = struct_pb2.Struct()
    settings.update(values if isinstance(values, dict) else {})
    function = cli_name(function_id, names.FUNCTION) if function_id else ""
    definitions = []
    if function:
        with registry() as r:
            fn = r.GetFunction(pb.GetFunctionRequest(name=function), metadata=metadata())
            definitions = list(version_settings(r, fn.function.latest_version))
    with stub("executor", executor_pb2_grpc.ExecutorStub) as ex:
        resp = ex.Preview(
            executor_pb2.PreviewRequest(
                code=code,
                event_json=payload.decode(),
                settings=settings,
                setting_definitions=definitions,
                function=function,
            ),
            metadata=metadata(),
        )
    return from_response(resp)


_LOG_LINE = re.compile(r"^(log|info|warn|error|debug|trace): (.*)$", re.DOTALL)


def from_response(resp: Any) -> PreviewResult:
    """Read an Executor.Preview answer as a local preview's result, so that both print (and
    print as JSON) alike."""
    outcome = OutcomeKind(NAME_OF.get(resp.outcome, OutcomeKind.FAILURE))
    error = None
    if resp.HasField("error"):
        error = PreviewError(resp.error.type, resp.error.message, resp.error.stack or None)
    kinds = [OutcomeKind(NAME_OF.get(o, OutcomeKind.FAILURE)) for o in resp.batch_outcomes]
    kinds = kinds or [outcome]
    logs: list[LogLine] = []
    for line in resp.logs.splitlines():
        found = _LOG_LINE.match(line)
        if found is not None:
            logs.append(LogLine(found.group(1), found.group(2)))
        elif logs:  # a message's own line break
            logs[-1] = LogLine(logs[-1].level, f"{logs[-1].message}\n{line}")
    return PreviewResult(
        outcome=outcome,
        outcomes=(
            [EventOutcome(outcome, error.type, error.message, error.stack)]
            if error is not None and len(kinds) == 1
            else [EventOutcome(kind) for kind in kinds]
        ),
        result=None if resp.result_json in ("", "undefined") else orjson.loads(resp.result_json),
        error=error,
        logs=logs,
        logs_truncated=resp.logs_truncated,
        requests=[
            RequestTrace(
                method=r.method,
                url=r.url,
                status=r.status or None,
                duration_ms=r.duration.ToTimedelta().total_seconds() * 1000,
                error=r.error or None,
                request_headers=tuple((h.name, h.value) for h in r.request_headers),
                request_body=r.request_body or None,
                response_headers=tuple((h.name, h.value) for h in r.response_headers),
                response_body=r.response_body or None,
            )
            for r in resp.requests
        ],
        duration_ms=resp.duration.ToTimedelta().total_seconds() * 1000,
    )


def preview(
    handler: Annotated[Path, typer.Argument(help="JavaScript file with onTrack/... handlers.")],
    event: Annotated[
        Path | None,
        typer.Option(
            "--event",
            "-e",
            help="Event JSON, or a JSON array to call onBatch; default: the sample track event.",
        ),
    ] = None,
    settings: Annotated[
        Path | None,
        typer.Option(
            "--settings",
            "-s",
            help='Test setting values: a JSON object, e.g. {"apiKey": "…"} (not the schema).',
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="name=value test setting (a string); repeatable."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON (for scripts and CI).")
    ] = False,
    remote: Annotated[
        bool,
        typer.Option(
            "--remote",
            help="Run on the running platform's executor (Executor.Preview RPC) instead.",
        ),
    ] = False,
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="Let fetch reach this private CIDR or host (repeatable)."),
    ] = None,
    function: Annotated[
        str,
        typer.Option(
            "--function",
            help="With --remote: the function (fn_…) the code is a draft of; you need to be "
            "its Functions Admin (without it: Functions Admin of all functions).",
        ),
    ] = "",
) -> None:
    """Run a function on a test event in-process and print result, logs and requests."""
    console = Console()
    code = read_code(handler)
    payload = _read_json_file(event, "event") if event is not None else sample_event("track")
    values = _read_values(settings)
    for pair in set_ or []:
        try:
            name, text = split_assignment(pair)
        except ValueError as error:
            fail(f"--set {error}")
        values[name] = text
    if remote:
        result = _preview_remote(code, payload, values, function)
    else:
        egress = EgressConfig.from_environ(allow=tuple(allow or ()))
        try:
            result = asyncio.run(
                preview_in_process(
                    code, payload, values, config=RuntimeConfig(workers=1, egress=egress)
                )
            )
        except InvalidInvocation as exc:
            fail(str(exc))
    if json_output:
        typer.echo(orjson.dumps(_as_jsonable(result), option=orjson.OPT_INDENT_2).decode())
    else:
        _print_human(result, console)
    if result.outcome != OutcomeKind.DELIVERED:
        raise typer.Exit(1)
