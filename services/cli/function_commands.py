"""CLI commands of functions, their versions and deploys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.cli import settings_input as si
from services.cli.client import (
    as_json_list,
    fail,
    metadata,
    out,
    pages,
    read_code,
    registry,
    table,
    when,
)

functions = typer.Typer(help="Destination functions and their versions.", no_args_is_help=True)

SCHEMA_HELP = (
    "Settings schema: a JSON list of {name, label, type, description, required, encrypted}; "
    "type: string, boolean, text map (or map), array (or string array)."
)
SetValues = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="name=value, read as the setting's declared type (a string as is; boolean "
        "true/false; a map as a JSON object; an array as a JSON array or a,b,c); repeatable.",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]


@functions.command("create")
def function_create(
    name: str,
    file: Annotated[Path, typer.Option("--file", "-f", help="The handler JavaScript file.")],
    settings: Annotated[Path | None, typer.Option(help=SCHEMA_HELP)] = None,
    description: str = "",
) -> None:
    """Create a function from a handler file (its first version)."""
    definitions = si.read_schema(settings)
    with registry() as r:
        resp = r.CreateFunction(
            pb.CreateFunctionRequest(
                name=name, description=description, code=read_code(file), settings=definitions
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
    set_: SetValues = None,
) -> None:
    """Save new code as a new version; with --deploy, also deploy it to those instances.

    With --set, the deployed instances get those setting values in the same step (e.g. for a
    setting the new version adds); all or nothing.
    """
    if set_ and not deploy:
        fail(
            "--set gives values to the deployed instances: add --deploy ins_… "
            "(or use `eventfn instances update`)"
        )
    with registry() as r:
        if settings:
            definitions = si.read_schema(settings)
        else:
            current = r.GetFunction(
                pb.GetFunctionRequest(function_id=function_id), metadata=metadata()
            )
            definitions = list(current.latest_version.settings)
        values = si.parse_sets(definitions, set_, "being saved")
        targets = list(dict.fromkeys(deploy or []))
        resp = r.SaveFunction(
            pb.SaveFunctionRequest(
                function_id=function_id,
                code=read_code(file),
                settings=definitions,
                deploy_instance_ids=targets,
                deploy_settings={i: si.struct(values) for i in targets} if values else {},
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
    set_: SetValues = None,
) -> None:
    """Deploy a saved version (e.g. an older one, to roll back) to instances.

    With --set, each instance gets those setting values in the same step as the deploy: the
    way to deploy a version that adds a required setting.
    """
    with registry() as r:
        values = si.parse_sets(si.version_settings(r, version_id), set_, version_id)
        for ins in dict.fromkeys(instances_):
            resp = r.DeployInstance(
                pb.DeployInstanceRequest(
                    instance_id=ins,
                    version_id=version_id,
                    settings=si.struct(values) if values else None,
                ),
                metadata=metadata(),
            )
            changed = f", settings {', '.join(sorted(values))} set" if values else ""
            out.print(f"{resp.instance.name} ({ins}) now runs {version_id}{changed}")


@functions.command("list")
def function_list(json_: Json = False) -> None:
    """List functions."""
    with registry() as r:
        rows = list(pages(r.ListFunctions, pb.ListFunctionsRequest(page_size=500), "functions"))
    if json_:
        as_json_list(rows)
        return
    table(
        "functions",
        ["id", "name", "latest version", "updated"],
        [[f.id, f.name, f.latest_version_number, when(f.update_time)] for f in rows],
    )


@functions.command("versions")
def function_versions(function_id: str, json_: Json = False) -> None:
    """List a function's versions, newest first."""
    with registry() as r:
        rows = list(
            pages(
                r.ListFunctionVersions,
                pb.ListFunctionVersionsRequest(function_id=function_id, page_size=500),
                "versions",
            )
        )
    if json_:
        as_json_list(rows)
        return
    table(
        "versions",
        ["number", "id", "saved by", "saved"],
        [[v.number, v.id, v.created_by, when(v.create_time)] for v in rows],
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
    table(
        "settings",
        ["name", "label", "type", "required", "encrypted"],
        [[s.name, s.label, si.kind_name(s.type), s.required, s.encrypted] for s in v.settings],
    )
    if code:
        out.print(v.code, highlight=False, markup=False)


@functions.command("delete")
def function_delete(function_id: str) -> None:
    """Delete a function without instances."""
    with registry() as r:
        r.DeleteFunction(pb.DeleteFunctionRequest(function_id=function_id), metadata=metadata())
    out.print(f"function {function_id} deleted")
