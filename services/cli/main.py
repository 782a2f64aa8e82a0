"""The `eventfn` command: run the platform, manage it, preview functions."""

from __future__ import annotations

import contextlib
from importlib import metadata
from pathlib import Path
from typing import Annotated

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli import access_commands as ac
from services.cli import function_commands as fc
from services.cli.admin_commands import admin
from services.cli.client import fail, out, safe, table
from services.cli.context import (
    ForeignStateDirError,
    load_context,
    remember_platform,
    state_dir,
    state_dir_to_start,
)
from services.cli.dead_commands import dead
from services.cli.deliveries_commands import deliveries
from services.cli.events_commands import events
from services.cli.instance_commands import instances
from services.cli.serve import serve
from services.cli.trace_commands import trace
from services.cli.workspace_commands import workspaces

app = typer.Typer(
    help="eventfn: self-hosted destination functions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
DISTRIBUTION = "eventfn"  # pyproject.toml's [project] name


def print_version(wanted: bool) -> None:
    """Print the installed eventfn's version and exit (`--version`)."""
    if not wanted:
        return
    try:
        typer.echo(f"eventfn {metadata.version(DISTRIBUTION)}")
    except metadata.PackageNotFoundError:
        fail(f"the {DISTRIBUTION} distribution is not installed: run `make install`")
    raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """eventfn: self-hosted destination functions."""
    try:
        state_dir()
    except ForeignStateDirError as error:
        fail(str(error))


app.add_typer(workspaces, name="workspaces")
app.add_typer(ac.members, name="members")
app.add_typer(ac.tokens, name="tokens")
app.add_typer(ac.sources, name="sources")
app.add_typer(fc.functions, name="functions")
app.add_typer(instances, name="instances")
app.command("audit")(ac.audit)
app.add_typer(events, name="events")
app.command("deliveries")(deliveries)
app.add_typer(dead, name="dead", no_args_is_help=True)
app.command("serve")(serve)
app.add_typer(admin, name="admin")
app.command("trace")(trace)

with contextlib.suppress(ImportError):
    from services.cli.preview import preview  # pyright: ignore[reportMissingImports]

    app.command("preview")(preview)


@app.command()
def up(
    state: Annotated[
        Path | None,
        typer.Option(
            help="State directory (default: EVENTFN_STATE_DIR, else the nearest .eventfn/ "
            "in this directory or a parent, else ./.eventfn)."
        ),
    ] = None,
) -> None:
    """Start the whole platform on embedded PostgreSQL and NATS; Ctrl-C stops it."""
    from services.cli.up import Platform
    from services.devtools.embedded.errors import EmbeddedServerError

    platform = Platform(state or state_dir_to_start())
    code = 1
    try:
        endpoints = platform.start()
        pointer = remember_platform(platform.state_dir)
        table("eventfn is up", ["what", "where"], list(endpoints.items()))
        if platform.first_run:
            out.print(
                "Try: [bold]eventfn workspaces create Acme[/] (from any directory: the CLI "
                f"finds this platform through {pointer})."
            )
        out.print(f"Logs in {platform.logs}; Ctrl-C stops everything (data is kept).")
        code = platform.watch()
    except (OSError, RuntimeError, EmbeddedServerError) as error:
        out.print(f"[red]error:[/] {safe(error)}", highlight=False)
    finally:
        platform.stop()
    raise typer.Exit(code)


@app.command()
def status() -> None:
    """Show whether each service of the running platform answers its health check."""
    context = load_context()
    if not context:
        fail(
            f"no platform found (looked for {state_dir()}): start it with `make up`, "
            "or set EVENTFN_STATE_DIR to its state directory"
        )
    rows = []
    for name, address in context.get("addresses", {}).items():
        state = "not running"
        with grpc.insecure_channel(address) as channel:
            with contextlib.suppress(grpc.RpcError):
                reply = health_pb2_grpc.HealthStub(channel).Check(  # pyright: ignore[reportAttributeAccessIssue]
                    health_pb2.HealthCheckRequest(), timeout=2
                )
                state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status).lower()
        rows.append([name, address, state])
        if name == "router" and context.get("router_http"):
            rows.append(["router (HTTP tracking API)", f"http://{context['router_http']}", state])
    table(f"services ({state_dir()})", ["service", "address", "status"], rows)


if __name__ == "__main__":
    app()
