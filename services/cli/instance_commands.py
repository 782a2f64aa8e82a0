"""CLI commands of instances: functions connected to sources."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import duration_pb2, field_mask_pb2, json_format

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.cli import settings_input as si
from services.cli.client import (
    as_json_list,
    fail,
    metadata,
    out,
    pages,
    registry,
    safe,
    short,
    table,
    version_name,
    workspace,
)
from services.cli.client import name as cli_name
from services.cli.function_commands import Json, SetValues
from services.common import names

instances = typer.Typer(help="Functions connected to sources.", no_args_is_help=True)

ValuesFile = Annotated[
    Path | None, typer.Option("--settings", help="JSON file of setting values (an object).")
]


PROPAGATE_HELP = (
    "Send the event's W3C trace context (traceparent) on every request the function makes, "
    "unless it sets its own (default: off)."
)


def duration(seconds: float | None) -> duration_pb2.Duration | None:
    """Make a Duration of seconds (None stays unset)."""
    if seconds is None:
        return None
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=seconds))
    return out


def seconds(value: duration_pb2.Duration) -> str:
    """Show a Duration as seconds."""
    return f"{value.ToTimedelta().total_seconds():g}s"


@instances.command("create")
def instance_create(
    function: Annotated[str, typer.Option(help="Function id.")],
    source: Annotated[str, typer.Option(help="Source id.")],
    settings: ValuesFile = None,
    set_: SetValues = None,
    name: str = "",
    version: Annotated[str, typer.Option(help="Version id (default: latest).")] = "",
    batch_size: Annotated[
        int | None, typer.Option(help="Events per onBatch call, 1..400 (default 20).")
    ] = None,
    batch_wait_ms: Annotated[
        int | None, typer.Option(help="Max wait for a batch in ms (default 10000).")
    ] = None,
    timeout_ms: Annotated[
        int | None, typer.Option(help="Per-invocation timeout in ms (default 5000).")
    ] = None,
    filter_: Annotated[
        list[str] | None, typer.Option("--filter", help="Destination filter; repeatable.")
    ] = None,
    retry_window_seconds: Annotated[
        int, typer.Option(help="Retry failed events this long, 60..86400 (0: default 4 h).")
    ] = 0,
    retry_max_delay_seconds: Annotated[
        int, typer.Option(help="Longest wait between attempts, 1..3600 (0: default 10 min).")
    ] = 0,
    disabled: bool = False,
    propagate_trace: Annotated[
        bool, typer.Option("--propagate-trace/--no-propagate-trace", help=PROPAGATE_HELP)
    ] = False,
) -> None:
    """Connect a function to a source."""
    values = si.read_values(settings)
    with registry() as r:
        fn_name = cli_name(function, names.FUNCTION)
        version_full = version_name(fn_name, version) if version else ""
        if set_:
            if version_full:
                definitions = si.version_settings(r, version_full)
            else:
                fn = r.GetFunction(pb.GetFunctionRequest(name=fn_name), metadata=metadata())
                definitions = fn.latest_version.settings
            values |= si.parse_sets(definitions, set_, version or "latest")
        ins = res.Instance(
            function=fn_name,
            source=cli_name(source, names.SOURCE),
            version=version_full,
            display_name=name,
            settings=si.struct(values),
            state=res.Instance.STATE_DISABLED if disabled else res.Instance.STATE_ENABLED,
            batch_size=batch_size or 0,
            filters=filter_ or [],
            batch_wait=duration(batch_wait_ms / 1000 if batch_wait_ms is not None else None),
            timeout=duration(timeout_ms / 1000 if timeout_ms is not None else None),
            retry_window=duration(retry_window_seconds or None),
            retry_max_delay=duration(retry_max_delay_seconds or None),
            propagate_trace=propagate_trace,
        )
        if batch_size == 0:
            fail("--batch-size must be 1..400")
        resp = r.CreateInstance(
            pb.CreateInstanceRequest(
                parent=workspace(), instance=ins, request_id=str(uuid.uuid4())
            ),
            metadata=metadata(),
        )
    created = resp.instance
    state = "enabled" if created.state == res.Instance.STATE_ENABLED else "disabled"
    tracing = ", sending trace context" if created.propagate_trace else ""
    out.print(
        f"instance {created.display_name} ({short(created.name)}) created, {state}, "
        f"running {short(created.version)}{tracing}"
    )


@instances.command("list")
def instance_list(function: str = "", source: str = "", json_: Json = False) -> None:
    """List instances."""
    with registry() as r:
        rows = list(
            pages(
                r.ListInstances,
                pb.ListInstancesRequest(
                    parent=workspace(),
                    function=cli_name(function, names.FUNCTION) if function else "",
                    source=cli_name(source, names.SOURCE) if source else "",
                    page_size=500,
                ),
                "instances",
            )
        )
    if json_:
        as_json_list(rows)
        return
    table(
        "instances",
        ["id", "name", "function", "source", "version", "enabled", "batch", "trace", "etag"],
        [
            [
                short(i.name),
                i.display_name,
                short(i.function),
                short(i.source),
                short(i.version),
                i.state == res.Instance.STATE_ENABLED,
                i.batch_size,
                "propagated" if i.propagate_trace else "",
                i.etag,
            ]
            for i in rows
        ],
    )


@instances.command("show")
def instance_show(instance_id: str) -> None:
    """Show an instance; encrypted settings are masked."""
    with registry() as r:
        resp = r.GetInstance(
            pb.GetInstanceRequest(name=cli_name(instance_id, names.INSTANCE)), metadata=metadata()
        )
    out.print_json(json_format.MessageToJson(resp.instance))


def _changes(
    current: res.Instance, values: dict[str, Any] | None, **fields: Any
) -> tuple[res.Instance, list[str]]:
    """Build the instance and update mask of the given changes."""
    ins = res.Instance(name=current.name, etag=current.etag)
    paths = []
    if values is not None:
        ins.settings.update(values)
        paths.append("settings")
    for field, value in fields.items():
        if value is None:
            continue
        if field == "filters":
            ins.filters.extend(value)
        elif field == "state":
            ins.state = res.Instance.STATE_ENABLED if value else res.Instance.STATE_DISABLED
        elif field in ("batch_wait", "timeout"):
            getattr(ins, field).CopyFrom(duration(value))
        elif field in ("retry_window", "retry_max_delay"):
            if value:  # 0: unset, the deployment's default
                getattr(ins, field).CopyFrom(duration(value))
        else:
            setattr(ins, field, value)
        paths.append(field)
    return ins, paths


def _describe(paths: list[str], ins: res.Instance) -> str:
    """Say what changed, e.g. `disabled`, `renamed to "EU hook"`, `filters (none)`."""
    words = []
    for path in paths:
        if path == "state":
            words.append("enabled" if ins.state == res.Instance.STATE_ENABLED else "disabled")
        elif path == "display_name":
            words.append(f"renamed to {safe(repr(ins.display_name))}")
        elif path == "filters":
            words.append(f"filters ({len(ins.filters) or 'none'})")
        elif path == "propagate_trace":
            words.append(f"trace propagation {'on' if ins.propagate_trace else 'off'}")
        else:
            words.append(path)
    return ", ".join(words)


@instances.command("update")
def instance_update(
    instance_id: str,
    settings: Annotated[
        Path | None,
        typer.Option("--settings", help="JSON file of setting values (replaces them all)."),
    ] = None,
    set_: SetValues = None,
    name: Annotated[str | None, typer.Option("--name", help="Rename the instance.")] = None,
    enabled: Annotated[bool | None, typer.Option("--enabled/--disabled")] = None,
    batch_size: int | None = None,
    batch_wait_ms: int | None = None,
    timeout_ms: int | None = None,
    retry_window_seconds: Annotated[
        int | None, typer.Option(help="Retry window, 60..86400 s (0: the default).")
    ] = None,
    retry_max_delay_seconds: Annotated[
        int | None, typer.Option(help="Longest wait between attempts, 1..3600 s (0: default).")
    ] = None,
    filter_: Annotated[
        list[str] | None,
        typer.Option("--filter", help="Destination filter (replaces all); repeatable."),
    ] = None,
    clear_filters: Annotated[
        bool, typer.Option("--clear-filters", help="Remove every destination filter.")
    ] = False,
    propagate_trace: Annotated[
        bool | None, typer.Option("--propagate-trace/--no-propagate-trace", help=PROPAGATE_HELP)
    ] = None,
) -> None:
    """Change an instance's name, settings, enabled flag, batching, timeout, filters or tracing.

    The change applies to the instance as read when the command starts: a concurrent change
    makes it fail (ABORTED) instead of being overwritten; run it again.
    """
    if clear_filters and filter_:
        fail("--clear-filters and --filter contradict each other: pass one")
    with registry() as r:
        current = r.GetInstance(
            pb.GetInstanceRequest(name=cli_name(instance_id, names.INSTANCE)), metadata=metadata()
        ).instance
        values = None
        if settings or set_:
            # --settings replaces every value; --set alone changes the named ones.
            values = (
                si.read_values(settings)
                if settings
                else json_format.MessageToDict(current.settings)
            )
            if set_:
                values |= si.parse_sets(
                    si.version_settings(r, current.version),
                    set_,
                    short(current.version),
                    hint="a setting a newer version declares is set with the deploy: "
                    "`eventfn functions deploy ver_… --instance "
                    f"{instance_id} --set name=value`",
                )
        ins, paths = _changes(
            current,
            values,
            display_name=name,
            state=enabled,
            batch_size=batch_size,
            batch_wait=batch_wait_ms / 1000 if batch_wait_ms is not None else None,
            timeout=timeout_ms / 1000 if timeout_ms is not None else None,
            retry_window=retry_window_seconds,
            retry_max_delay=retry_max_delay_seconds,
            filters=[] if clear_filters else filter_,
            propagate_trace=propagate_trace,
        )
        if not paths:
            fail(
                "nothing to change: pass --name, --set, --settings, --enabled/--disabled, "
                "--batch-size, --filter, --clear-filters, ..."
            )
        resp = r.UpdateInstance(
            pb.UpdateInstanceRequest(
                instance=ins, update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
            metadata=metadata(),
        )
    out.print(f"instance {instance_id} updated: {_describe(paths, resp.instance)}")


@instances.command("delete")
def instance_delete(instance_id: str) -> None:
    """Delete an instance."""
    with registry() as r:
        r.DeleteInstance(
            pb.DeleteInstanceRequest(name=cli_name(instance_id, names.INSTANCE)),
            metadata=metadata(),
        )
    out.print(f"instance {instance_id} deleted")
