"""CLI commands of instances: functions connected to sources."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import field_mask_pb2, json_format

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.cli import settings_input as si
from services.cli.client import as_json_list, fail, metadata, out, pages, registry, table
from services.cli.function_commands import Json, SetValues

instances = typer.Typer(help="Functions connected to sources.", no_args_is_help=True)

ValuesFile = Annotated[
    Path | None, typer.Option("--settings", help="JSON file of setting values (an object).")
]


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
        int | None, typer.Option(help="Max wait for a batch (default 10000).")
    ] = None,
    timeout_ms: Annotated[
        int | None, typer.Option(help="Per-invocation timeout (default 5000).")
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
) -> None:
    """Connect a function to a source."""
    values = si.read_values(settings)
    with registry() as r:
        if set_:
            if version:
                definitions = si.version_settings(r, version)
            else:
                fn = r.GetFunction(pb.GetFunctionRequest(function_id=function), metadata=metadata())
                definitions = fn.latest_version.settings
            values |= si.parse_sets(definitions, set_, version or "latest")
        req = pb.CreateInstanceRequest(
            function_id=function,
            source_id=source,
            name=name,
            version_id=version,
            settings=si.struct(values),
            enabled=not disabled,
            filters=filter_ or [],
            retry_window_seconds=retry_window_seconds,
            retry_max_delay_seconds=retry_max_delay_seconds,
        )
        if batch_size is not None:
            req.batch_size = batch_size
        if batch_wait_ms is not None:
            req.batch_wait_ms = batch_wait_ms
        if timeout_ms is not None:
            req.timeout_ms = timeout_ms
        resp = r.CreateInstance(req, metadata=metadata())
    state = "enabled" if resp.instance.enabled else "disabled"
    out.print(
        f"instance {resp.instance.name} ({resp.instance.id}) created, {state}, "
        f"running {resp.instance.version_id}"
    )


@instances.command("list")
def instance_list(function: str = "", source: str = "", json_: Json = False) -> None:
    """List instances."""
    with registry() as r:
        rows = list(
            pages(
                r.ListInstances,
                pb.ListInstancesRequest(function_id=function, source_id=source, page_size=500),
                "instances",
            )
        )
    if json_:
        as_json_list(rows)
        return
    table(
        "instances",
        ["id", "name", "function", "source", "version", "enabled", "batch", "etag"],
        [
            [
                i.id,
                i.name,
                i.function_id,
                i.source_id,
                i.version_id,
                i.enabled,
                i.batch_size,
                i.etag,
            ]
            for i in rows
        ],
    )


@instances.command("show")
def instance_show(instance_id: str) -> None:
    """Show an instance; encrypted settings are masked."""
    with registry() as r:
        resp = r.GetInstance(pb.GetInstanceRequest(instance_id=instance_id), metadata=metadata())
    out.print_json(json_format.MessageToJson(resp.instance))


def _changes(
    instance_id: str, etag: str, values: dict[str, Any] | None, **fields: Any
) -> tuple[res.Instance, list[str]]:
    """Build the instance and update mask of the given changes."""
    ins = res.Instance(id=instance_id, etag=etag)
    paths = []
    if values is not None:
        ins.settings.update(values)
        paths.append("settings")
    for field, value in fields.items():
        if value is None:
            continue
        if field == "filters":
            ins.filters.extend(value)
        else:
            setattr(ins, field, value)
        paths.append(field)
    return ins, paths


def _describe(paths: list[str], ins: res.Instance) -> str:
    """Say what changed, e.g. `disabled`, `name "EU hook"`, `filters (none)`."""
    words = []
    for path in paths:
        if path == "enabled":
            words.append("enabled" if ins.enabled else "disabled")
        elif path == "name":
            words.append(f"renamed to {ins.name!r}")
        elif path == "filters":
            words.append(f"filters ({len(ins.filters) or 'none'})")
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
    retry_window_seconds: int | None = None,
    retry_max_delay_seconds: int | None = None,
    filter_: Annotated[
        list[str] | None,
        typer.Option("--filter", help="Destination filter (replaces all); repeatable."),
    ] = None,
    clear_filters: Annotated[
        bool, typer.Option("--clear-filters", help="Remove every destination filter.")
    ] = False,
) -> None:
    """Change an instance's name, settings, enabled flag, batching, timeout or filters."""
    if clear_filters and filter_:
        fail("--clear-filters and --filter contradict each other: pass one")
    with registry() as r:
        current = r.GetInstance(
            pb.GetInstanceRequest(instance_id=instance_id), metadata=metadata()
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
                    si.version_settings(r, current.version_id),
                    set_,
                    current.version_id,
                    hint="a setting a newer version declares is set with the deploy: "
                    "`eventfn functions deploy ver_… --instance "
                    f"{instance_id} --set name=value`",
                )
        ins, paths = _changes(
            instance_id,
            current.etag,
            values,
            name=name,
            enabled=enabled,
            batch_size=batch_size,
            batch_wait_ms=batch_wait_ms,
            timeout_ms=timeout_ms,
            retry_window_seconds=retry_window_seconds,
            retry_max_delay_seconds=retry_max_delay_seconds,
            filters=[] if clear_filters else filter_,
        )
        if not paths:
            fail(
                "nothing to change: pass --name, --set, --settings, --enabled/--disabled, "
                "--batch-size, --filter, --clear-filters, ..."
            )
        resp = r.UpdateInstance(
            pb.UpdateInstanceRequest(
                instance=ins,
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            ),
            metadata=metadata(),
        )
    out.print(f"instance {instance_id} updated: {_describe(paths, resp.instance)}")


@instances.command("delete")
def instance_delete(instance_id: str) -> None:
    """Delete an instance."""
    with registry() as r:
        r.DeleteInstance(pb.DeleteInstanceRequest(instance_id=instance_id), metadata=metadata())
    out.print(f"instance {instance_id} deleted")
