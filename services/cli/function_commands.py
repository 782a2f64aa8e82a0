"""CLI commands of functions, their versions and deploys."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

import grpc
import typer
from google.protobuf import field_mask_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.cli import settings_input as si
from services.cli.client import (
    as_json_list,
    fail,
    metadata,
    out,
    pages,
    plain,
    read_code,
    registry,
    safe,
    short,
    table,
    version_name,
    when,
    workspace,
)
from services.cli.client import name as cli_name
from services.common import names

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


def new_request_id() -> str:
    """Make the request_id of one command: a retry of the same call sends it again."""
    return str(uuid.uuid4())


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
                parent=workspace(),
                function=res.DestinationFunction(display_name=name, description=description),
                code=read_code(file),
                settings=definitions,
                request_id=new_request_id(),
            ),
            metadata=metadata(),
        )
    out.print(
        f"function {resp.function.display_name} ({short(resp.function.name)}) created, "
        f"version 1 ({short(resp.version.name)})"
    )


@functions.command("update")
def function_update(
    function_id: str,
    name: Annotated[str | None, typer.Option("--name", help="A new display name.")] = None,
    description: Annotated[str | None, typer.Option(help="A new description.")] = None,
) -> None:
    """Rename a function or change its description."""
    paths = [p for p, v in (("display_name", name), ("description", description)) if v is not None]
    if not paths:
        fail("nothing to change: pass --name or --description")
    with registry() as r:
        current = r.GetFunction(
            pb.GetFunctionRequest(name=cli_name(function_id, names.FUNCTION)), metadata=metadata()
        ).function
        resp = r.UpdateFunction(
            pb.UpdateFunctionRequest(
                function=res.DestinationFunction(
                    name=current.name,
                    display_name=name or "",
                    description=description or "",
                    etag=current.etag,
                ),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            ),
            metadata=metadata(),
        )
    out.print(
        f"function {resp.function.display_name} ({short(resp.function.name)}) updated: "
        + ", ".join(paths)
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

    The save is based on the function as it is when the command starts: should someone else
    save in between, it is refused (ABORTED) instead of silently replacing their version.
    With --set, the deployed instances get those setting values in the same step (e.g. for a
    setting the new version adds); all or nothing.
    """
    if set_ and not deploy:
        fail(
            "--set gives values to the deployed instances: add --deploy ins_… "
            "(or use `eventfn instances update`)"
        )
    code = read_code(file)
    with registry() as r:
        fn_name = cli_name(function_id, names.FUNCTION)
        current = r.GetFunction(pb.GetFunctionRequest(name=fn_name), metadata=metadata())
        if settings:
            definitions = si.read_schema(settings)
        else:
            definitions = list(current.latest_version.settings)
        values = si.parse_sets(definitions, set_, "being saved")
        targets = [cli_name(i, names.INSTANCE) for i in dict.fromkeys(deploy or [])]
        resp = r.SaveFunction(
            pb.SaveFunctionRequest(
                name=fn_name,
                code=code,
                settings=definitions,
                deploy_instances=targets,
                deploy_settings={i: si.struct(values) for i in targets} if values else {},
                etag=current.function.etag,
                request_id=new_request_id(),
            ),
            metadata=metadata(),
        )
    out.print(f"saved version {resp.version.number} ({short(resp.version.name)})")
    for ins in resp.deployed_instances:
        out.print(f"  deployed to {safe(ins.display_name)} ({short(ins.name)})")


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
        targets = [cli_name(i, names.INSTANCE) for i in dict.fromkeys(instances_)]
        first = r.GetInstance(pb.GetInstanceRequest(name=targets[0]), metadata=metadata())
        version = version_name(first.instance.function, version_id)
        values = si.parse_sets(si.version_settings(r, version), set_, version_id)
        for ins in targets:
            resp = r.DeployInstance(
                pb.DeployInstanceRequest(
                    name=ins,
                    version=version,
                    settings=si.struct(values) if values else None,
                ),
                metadata=metadata(),
            )
            changed = f", settings {', '.join(sorted(values))} set" if values else ""
            out.print(
                f"{resp.instance.display_name} ({short(ins)}) now runs {short(version)}{changed}"
            )


@functions.command("list")
def function_list(json_: Json = False) -> None:
    """List functions."""
    with registry() as r:
        rows = list(
            pages(
                r.ListFunctions,
                pb.ListFunctionsRequest(parent=workspace(), page_size=500),
                "functions",
            )
        )
    if json_:
        as_json_list(rows)
        return
    table(
        "functions",
        ["id", "name", "latest version", "updated"],
        [
            [short(f.name), f.display_name, f.latest_version_number, when(f.update_time)]
            for f in rows
        ],
    )


@functions.command("versions")
def function_versions(function_id: str, json_: Json = False) -> None:
    """List a function's versions, newest first, with the instances running each."""
    fn_name = cli_name(function_id, names.FUNCTION)
    with registry() as r:
        rows = list(
            pages(
                r.ListFunctionVersions,
                pb.ListFunctionVersionsRequest(parent=fn_name, page_size=500),
                "versions",
            )
        )
        if json_:
            as_json_list(rows)
            return
        running: dict[str, list[str]] = {}
        try:
            for ins in pages(
                r.ListInstances,
                pb.ListInstancesRequest(parent=workspace(), function=fn_name, page_size=500),
                "instances",
            ):
                running.setdefault(ins.version, []).append(short(ins.name))
        except grpc.RpcError as error:  # a member who may read functions, not instances
            if error.code() != grpc.StatusCode.PERMISSION_DENIED:  # type: ignore[attr-defined]
                raise
    table(
        "versions",
        ["number", "id", "saved by", "saved", "running on"],
        [
            [
                v.number,
                short(v.name),
                v.creator,
                when(v.create_time),
                ", ".join(running.get(v.name, [])),
            ]
            for v in rows
        ],
    )


@functions.command("delete-version")
def function_delete_version(function_id: str, version_id: str) -> None:
    """Delete a version no instance runs (not the latest), freeing the workspace's code quota."""
    version = version_name(function_id, version_id)
    with registry() as r:
        r.DeleteFunctionVersion(pb.DeleteFunctionVersionRequest(name=version), metadata=metadata())
    out.print(f"version {short(version)} of {short(function_id)} deleted")


@functions.command("show")
def function_show(
    function_id: str,
    code: Annotated[bool, typer.Option(help="Print the latest code too.")] = False,
) -> None:
    """Show a function, its settings schema and (with --code) its latest code."""
    with registry() as r:
        resp = r.GetFunction(
            pb.GetFunctionRequest(name=cli_name(function_id, names.FUNCTION)), metadata=metadata()
        )
    f, v = resp.function, resp.latest_version
    out.print(
        f"[bold]{safe(f.display_name)}[/] ({short(f.name)}) — "
        f"{safe(f.description or 'no description')}; "
        f"version {v.number} ({short(v.name)})"
    )
    table(
        "settings",
        ["name", "label", "type", "required", "encrypted"],
        [[s.name, s.label, si.kind_name(s.type), s.required, s.encrypted] for s in v.settings],
    )
    if code:
        # Shown as written: a bidirectional override in a comment would show code that is
        # not the code that runs (Trojan Source); Windows line ends are kept as line ends.
        out.print(plain(v.code.replace("\r\n", "\n")), highlight=False, markup=False)


@functions.command("delete")
def function_delete(function_id: str) -> None:
    """Delete a function without instances."""
    with registry() as r:
        r.DeleteFunction(
            pb.DeleteFunctionRequest(name=cli_name(function_id, names.FUNCTION)),
            metadata=metadata(),
        )
    out.print(f"function {function_id} deleted")
