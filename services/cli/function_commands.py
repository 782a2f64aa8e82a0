"""CLI commands of functions, versions, deploys and instances."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import field_mask_pb2, json_format, struct_pb2

from eventfn.registry.v1 import registry_pb2 as pb
from eventfn.registry.v1 import resources_pb2 as res
from eventfn.type.v1 import types_pb2
from services.cli.access_commands import registry
from services.cli.client import fail, metadata, out, read_code, read_json, table, when

functions = typer.Typer(help="Destination functions and their versions.", no_args_is_help=True)
instances = typer.Typer(help="Functions connected to sources.", no_args_is_help=True)

SETTING_TYPES = {
    "string": types_pb2.SETTING_TYPE_STRING,
    "boolean": types_pb2.SETTING_TYPE_BOOLEAN,
    "text-map": types_pb2.SETTING_TYPE_TEXT_MAP,
    "string-array": types_pb2.SETTING_TYPE_STRING_ARRAY,
}


def parse_settings_schema(path: Path | None) -> list[types_pb2.SettingDefinition]:
    """Read a settings schema file: a JSON list of {name, label, type, required, encrypted}."""
    if path is None:
        return []
    rows = read_json(path, "settings schema")
    if not isinstance(rows, list):
        fail(f"{path} must hold a JSON list of settings")
    out_rows = []
    for i, row in enumerate(rows):
        kind = row.get("type", "string")
        if kind not in SETTING_TYPES:
            fail(f"{path}: settings[{i}].type {kind!r} is not one of {', '.join(SETTING_TYPES)}")
        out_rows.append(
            types_pb2.SettingDefinition(
                label=row.get("label", ""),
                name=row.get("name", ""),
                type=SETTING_TYPES[kind],
                description=row.get("description", ""),
                required=bool(row.get("required", False)),
                encrypted=bool(row.get("encrypted", False)),
            )
        )
    return out_rows


# -- functions ----------------------------------------------------------------------------


@functions.command("create")
def function_create(
    name: str,
    file: Annotated[Path, typer.Option("--file", "-f", help="The handler JavaScript file.")],
    settings: Annotated[
        Path | None,
        typer.Option(
            help="Settings schema: JSON list of {name, label, type, required, encrypted}."
        ),
    ] = None,
    description: str = "",
) -> None:
    """Create a function from a handler file (its first version)."""
    with registry() as r:
        resp = r.CreateFunction(
            pb.CreateFunctionRequest(
                name=name,
                description=description,
                code=read_code(file),
                settings=parse_settings_schema(settings),
            ),
            metadata=metadata(),
        )
    out.print(
        f"function {resp.function.name} ({resp.function.id}) created, version 1 ({resp.version.id})"
    )


@functions.command("save")
def function_save(
    function_id: str,
    file: Annotated[Path, typer.Option("--file", "-f", help="The handler JavaScript file.")],
    settings: Annotated[
        Path | None, typer.Option(help="Settings schema file (default: keep the current one).")
    ] = None,
    deploy: Annotated[
        list[str] | None,
        typer.Option(
            "--deploy", help="Instance id to move to the new version (Save & Deploy); repeatable."
        ),
    ] = None,
) -> None:
    """Save new code as a new version; with --deploy, also deploy it to those instances."""
    with registry() as r:
        schema = (
            parse_settings_schema(settings)
            if settings
            else list(
                r.GetFunction(
                    pb.GetFunctionRequest(function_id=function_id), metadata=metadata()
                ).latest_version.settings
            )
        )
        resp = r.SaveFunction(
            pb.SaveFunctionRequest(
                function_id=function_id,
                code=read_code(file),
                settings=schema,
                deploy_instance_ids=deploy or [],
            ),
            metadata=metadata(),
        )
    out.print(f"saved version {resp.version.number} ({resp.version.id})")
    for ins in resp.deployed_instances:
        out.print(f"  deployed to {ins.name} ({ins.id})")


@functions.command("deploy")
def function_deploy(
    version_id: str,
    instances_: Annotated[
        list[str], typer.Option("--instances", "--instance", help="Instance id; repeatable.")
    ],
) -> None:
    """Deploy a saved version (e.g. an older one, to roll back) to instances."""
    with registry() as r:
        for ins in instances_:
            resp = r.DeployInstance(
                pb.DeployInstanceRequest(instance_id=ins, version_id=version_id),
                metadata=metadata(),
            )
            out.print(
                f"{resp.instance.name} ({ins}) now runs {version_id} "
                f"(revision {resp.instance.revision})"
            )


@functions.command("list")
def function_list() -> None:
    """List functions."""
    with registry() as r:
        resp = r.ListFunctions(pb.ListFunctionsRequest(page_size=500), metadata=metadata())
    table(
        "functions",
        ["id", "name", "latest version", "updated"],
        [[f.id, f.name, f.latest_version_number, when(f.update_time)] for f in resp.functions],
    )


@functions.command("versions")
def function_versions(function_id: str) -> None:
    """List a function's versions, newest first."""
    with registry() as r:
        resp = r.ListFunctionVersions(
            pb.ListFunctionVersionsRequest(function_id=function_id, page_size=500),
            metadata=metadata(),
        )
    table(
        "versions",
        ["number", "id", "saved by", "saved"],
        [[v.number, v.id, v.created_by, when(v.create_time)] for v in resp.versions],
    )


@functions.command("show")
def function_show(
    function_id: str,
    code: Annotated[bool, typer.Option(help="Print the latest code too.")] = False,
) -> None:
    """Show a function, its settings schema and (with --code) its latest code."""
    with registry() as r:
        resp = r.GetFunction(pb.GetFunctionRequest(function_id=function_id), metadata=metadata())
    f, v = resp.function, resp.latest_version
    out.print(
        f"[bold]{f.name}[/] ({f.id}) — {f.description or 'no description'}; "
        f"version {v.number} ({v.id})"
    )
    kinds = {v: k for k, v in SETTING_TYPES.items()}
    table(
        "settings",
        ["name", "label", "type", "required", "encrypted"],
        [[s.name, s.label, kinds.get(s.type, "?"), s.required, s.encrypted] for s in v.settings],
    )
    if code:
        out.print(v.code, highlight=False, markup=False)


@functions.command("delete")
def function_delete(function_id: str) -> None:
    """Delete a function without instances."""
    with registry() as r:
        r.DeleteFunction(pb.DeleteFunctionRequest(function_id=function_id), metadata=metadata())
    out.print(f"function {function_id} deleted")


# -- instances ----------------------------------------------------------------------------


def settings_struct(path: Path | None, pairs: list[str] | None) -> struct_pb2.Struct:
    """Build settings values from a JSON file and/or name=value pairs."""
    values: dict[str, Any] = dict(read_json(path, "settings values")) if path else {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep:
            fail(f"--set takes name=value, got {pair!r}")
        try:
            values[name] = json.loads(value)
        except json.JSONDecodeError:
            values[name] = value
    s = struct_pb2.Struct()
    s.update(values)
    return s


@instances.command("create")
def instance_create(
    function: Annotated[str, typer.Option(help="Function id.")],
    source: Annotated[str, typer.Option(help="Source id.")],
    settings: Annotated[Path | None, typer.Option(help="JSON file of settings values.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="name=value setting; repeatable.")
    ] = None,
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
    req = pb.CreateInstanceRequest(
        function_id=function,
        source_id=source,
        name=name,
        version_id=version,
        settings=settings_struct(settings, set_),
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
    with registry() as r:
        resp = r.CreateInstance(req, metadata=metadata())
    out.print(
        f"instance {resp.instance.name} ({resp.instance.id}) created, "
        f"running {resp.instance.version_id}"
    )


@instances.command("list")
def instance_list(function: str = "", source: str = "") -> None:
    """List instances."""
    with registry() as r:
        resp = r.ListInstances(
            pb.ListInstancesRequest(function_id=function, source_id=source, page_size=500),
            metadata=metadata(),
        )
    table(
        "instances",
        ["id", "name", "function", "source", "version", "enabled", "batch", "rev"],
        [
            [
                i.id,
                i.name,
                i.function_id,
                i.source_id,
                i.version_id,
                i.enabled,
                i.batch_size,
                i.revision,
            ]
            for i in resp.instances
        ],
    )


@instances.command("show")
def instance_show(instance_id: str) -> None:
    """Show an instance; encrypted settings are masked."""
    with registry() as r:
        resp = r.GetInstance(pb.GetInstanceRequest(instance_id=instance_id), metadata=metadata())
    out.print_json(json_format.MessageToJson(resp.instance))


@instances.command("update")
def instance_update(
    instance_id: str,
    settings: Annotated[
        Path | None, typer.Option(help="JSON file of settings values (replaces them).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="name=value setting; repeatable.")
    ] = None,
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
) -> None:
    """Change an instance's settings, enabled flag, batching, timeout or filters."""
    with registry() as r:
        current = r.GetInstance(
            pb.GetInstanceRequest(instance_id=instance_id), metadata=metadata()
        ).instance
        ins = res.Instance(id=instance_id)
        paths = []
        if settings or set_:
            merged = json_format.MessageToDict(current.settings) if not settings else {}
            merged.update(json_format.MessageToDict(settings_struct(settings, set_)))
            ins.settings.update(merged)
            paths.append("settings")
        for field, value in (
            ("enabled", enabled),
            ("batch_size", batch_size),
            ("batch_wait_ms", batch_wait_ms),
            ("timeout_ms", timeout_ms),
            ("retry_window_seconds", retry_window_seconds),
            ("retry_max_delay_seconds", retry_max_delay_seconds),
        ):
            if value is not None:
                setattr(ins, field, value)
                paths.append(field)
        if filter_ is not None:
            ins.filters.extend(filter_)
            paths.append("filters")
        if not paths:
            fail(
                "nothing to change: pass --set, --settings, --enabled/--disabled, --batch-size, ..."
            )
        resp = r.UpdateInstance(
            pb.UpdateInstanceRequest(
                instance=ins,
                update_mask=field_mask_pb2.FieldMask(paths=paths),
                expected_revision=current.revision,
            ),
            metadata=metadata(),
        )
    out.print(
        f"instance {instance_id} updated ({', '.join(paths)}), revision {resp.instance.revision}"
    )


@instances.command("delete")
def instance_delete(instance_id: str) -> None:
    """Delete an instance."""
    with registry() as r:
        r.DeleteInstance(pb.DeleteInstanceRequest(instance_id=instance_id), metadata=metadata())
    out.print(f"instance {instance_id} deleted")
