"""CLI commands of workspaces, and of which workspace (token) the CLI works in.

The context file keeps the bootstrap admin token (`admin_token`, from `eventfn up`), the
token of each workspace created or added here (`workspaces`: id → name, email, token) and the
current one (`token`); `workspaces use` switches between them.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.cli.access_commands import role_text
from services.cli.client import fail, metadata, out, registry, safe, short, table
from services.cli.context import load_context, save_context

workspaces = typer.Typer(
    help="Workspaces, and which one the CLI works in (create: bootstrap admin only).",
    no_args_is_help=True,
)
ADMIN = "admin"


def known_workspaces(context: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Return the workspaces the context holds a token for, by id."""
    return dict(context.get("workspaces") or {})


def remember(workspace_id: str, name: str, email: str, token: str) -> str:
    """Keep a workspace's token in the context and make it current; return the file's path."""
    saved = known_workspaces(load_context())
    saved[workspace_id] = {"name": name, "email": email, "token": token}
    return str(save_context(workspaces=saved, token=token))


@workspaces.command("create")
def workspace_create(
    name: str,
    use: Annotated[
        bool, typer.Option(help="Make the new owner token the CLI's current token.")
    ] = True,
    owner_email: Annotated[
        str,
        typer.Option(help="The first owner's email (the audit trail's name for its token)."),
    ] = "",
) -> None:
    """Create a workspace and print its owner token (kept for `workspaces use`)."""
    with registry() as r:
        resp = r.CreateWorkspace(
            pb.CreateWorkspaceRequest(
                workspace=res.Workspace(display_name=name),
                request_id=str(uuid.uuid4()),
                owner_email=owner_email,
            ),
            metadata=metadata(),
        )
    ws = resp.workspace
    ws_id = short(ws.name)
    out.print(f"workspace [bold]{safe(ws.display_name)}[/] ({ws_id}) created")
    out.print(f"owner token: [bold]{resp.token}[/]")
    saved = known_workspaces(load_context())
    saved[ws_id] = {"name": ws.display_name, "email": resp.owner.email, "token": resp.token}
    if use:
        path = save_context(workspaces=saved, token=resp.token)
        out.print(
            f"the CLI now works in {ws.display_name} (token kept in {path}); "
            f"`eventfn workspaces use {ADMIN}` switches back to the bootstrap admin"
        )
    else:
        save_context(workspaces=saved)
        out.print(f"kept; `eventfn workspaces use {ws_id}` switches to it")


@workspaces.command("show")
def workspace_show() -> None:
    """Show the current token's workspace and member."""
    with registry() as r:
        me = r.WhoAmI(pb.WhoAmIRequest(), metadata=metadata())
    table(
        "whoami",
        ["workspace", "workspace id", "member", "roles", "bootstrap admin"],
        [
            [
                me.workspace.display_name,
                short(me.workspace.name),
                me.member.email,
                role_text(me.member.roles),
                me.bootstrap_admin,
            ]
        ],
    )


@workspaces.command("list")
def workspace_list(
    json_: Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")] = False,
) -> None:
    """List the workspaces the CLI holds a token for; `*` marks the current one."""
    context = load_context()
    current = context.get("token")
    rows = []
    if context.get("admin_token"):
        rows.append(
            {
                "use": ADMIN,
                "name": "(bootstrap admin)",
                "id": "",
                "email": "",
                "current": context["admin_token"] == current,
            }
        )
    for ws_id, ws in known_workspaces(context).items():
        rows.append(
            {
                "use": ws_id,
                "name": ws.get("name", ""),
                "id": ws_id,
                "email": ws.get("email", ""),
                "current": ws.get("token") == current,
            }
        )
    if json_:
        import json

        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        fail("the CLI holds no token yet: start the platform with `make up`")
    table(
        "workspaces known to the CLI",
        ["", "name", "id", "member"],
        [["*" if r["current"] else "", r["name"], r["id"], r["email"]] for r in rows],
    )


@workspaces.command("use")
def workspace_use(
    target: Annotated[
        str | None,
        typer.Argument(help=f"A workspace id or name listed by `workspaces list`, or {ADMIN!r}."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="Add this token (e.g. one a workspace owner gave you) and use it."),
    ] = None,
) -> None:
    """Switch the CLI to another workspace's token, the bootstrap admin, or a given token."""
    context = load_context()
    if token:
        with registry() as r:
            me = r.WhoAmI(pb.WhoAmIRequest(), metadata=(("authorization", f"Bearer {token}"),))
        remember(short(me.workspace.name), me.workspace.display_name, me.member.email, token)
        out.print(
            f"the CLI now works in {safe(me.workspace.display_name)} as {safe(me.member.email)}"
        )
        return
    if not target:
        fail(f"name a workspace (id or name from `eventfn workspaces list`), {ADMIN!r}, or --token")
    if target == ADMIN:
        if not context.get("admin_token"):
            fail("no bootstrap admin token here: `make up` stores it")
        save_context(token=context["admin_token"])
        out.print("the CLI now works as the bootstrap admin")
        return
    saved = known_workspaces(context)
    matches = [i for i, ws in saved.items() if target in (i, ws.get("name"))]
    if len(matches) != 1:
        known = ", ".join(f"{ws.get('name')} ({i})" for i, ws in saved.items()) or "none"
        why = "is ambiguous" if matches else "is not a workspace the CLI holds a token for"
        fail(f"{target!r} {why}; known: {known}; or pass --token")
    save_context(token=saved[matches[0]]["token"])
    out.print(f"the CLI now works in {safe(saved[matches[0]].get('name'))} ({matches[0]})")
