"""The `eventfn` command: run the platform, manage it, preview functions."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli import access_commands as ac
from services.cli import function_commands as fc
from services.cli.client import fail, load_context, out, state_dir, table
from services.cli.dead_commands import dead
from services.cli.deliveries_commands import deliveries
from services.cli.events_commands import events

app = typer.Typer(
    help="eventfn: self-hosted destination functions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(ac.workspaces, name="workspaces")
app.add_typer(ac.members, name="members")
app.add_typer(ac.tokens, name="tokens")
app.add_typer(ac.sources, name="sources")
app.add_typer(fc.functions, name="functions")
app.add_typer(fc.instances, name="instances")
app.command("audit")(ac.audit)
app.add_typer(events, name="events")
app.command("deliveries")(deliveries)
app.add_typer(dead, name="dead")

with contextlib.suppress(ImportError):
    from services.cli.preview import preview  # pyright: ignore[reportMissingImports]

    app.command("preview")(preview)


@app.command()
def up(
    state: Annotated[Path | None, typer.Option(help="State directory (default .eventfn).")] = None,
) -> None:
    """Start the whole platform on embedded PostgreSQL and NATS; Ctrl-C stops it."""
    from services.cli.up import Platform

    platform = Platform(state or state_dir())
    code = 1
    try:
        endpoints = platform.start()
        table("eventfn is up", ["what", "where"], list(endpoints.items()))
        out.print(
            "Try: [bold]eventfn workspaces create Acme[/] — logs in "
            f"{platform.logs}; Ctrl-C stops everything (data is kept)."
        )
        code = platform.watch()
    except Exception as error:
        out.print(f"[red]error:[/] {error}", highlight=False)
    finally:
        platform.stop()
    raise typer.Exit(code)


@app.command()
def status() -> None:
    """Show whether each service of the running platform answers its health check."""
    context = load_context()
    if not context:
        fail("no running platform found: start it with `make up`")
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
    table("services", ["service", "address", "status"], rows)


if __name__ == "__main__":
    app()
