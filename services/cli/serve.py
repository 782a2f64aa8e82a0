"""`eventfn serve <service>`: run one service in this process, as a container's entry point.

`eventfn serve registry|router|executor|retrier` runs that service's `__main__` here (its
settings come from `EVENTFN_*` variables, as with `python -m services.<name>`).
`eventfn serve init` is the one-shot step of a deployment that runs before the services: it
brings the database schema to the newest migration and registers the bootstrap token (by
starting the registry once on loopback, until it answers its health check), and creates the
JetStream streams with `EVENTFN_STREAM_REPLICAS` replicas. `--check` asks the service's gRPC
health instead of starting it (a container's health check); without a service name it asks
every service's listen address and succeeds when one of them is serving, which is the one
service of a container.

The CLI imports no service (the import contract): a service is run by its module name.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
from typing import Annotated

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.settings import DataPlaneSettings

SERVICES = ("registry", "router", "executor", "retrier")
# Where each service listens unless EVENTFN_<SERVICE>_LISTEN says otherwise (the settings'
# defaults; `eventfn up` uses the same).
DEFAULT_LISTEN = {
    "registry": "127.0.0.1:50051",
    "router": "127.0.0.1:50052",
    "executor": "127.0.0.1:50053",
    "retrier": "127.0.0.1:50054",
}
INIT_TIMEOUT_SECONDS = 180.0


def listen_address(service: str, env: dict[str, str]) -> str:
    """Return the address a service's health is asked at (a wildcard host means loopback)."""
    address = env.get(f"EVENTFN_{service.upper()}_LISTEN") or DEFAULT_LISTEN[service]
    host, _, port = address.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def health_status(address: str, timeout: float = 3.0) -> str:
    """Return the gRPC health status name at address (`UNREACHABLE` when nothing answers)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(  # pyright: ignore[reportAttributeAccessIssue]
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            return "UNREACHABLE" if code in (None, grpc.StatusCode.UNAVAILABLE) else code.name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def check(service: str | None) -> int:
    """Print and return (0: serving) the health of one service, or of this container's one."""
    env = dict(os.environ)
    names = [service] if service else list(SERVICES)
    answers = {name: health_status(listen_address(name, env)) for name in names}
    serving = [name for name, status in answers.items() if status == "SERVING"]
    if serving:
        typer.echo(f"{serving[0]} at {listen_address(serving[0], env)}: SERVING")
        return 0
    typer.echo(
        "; ".join(f"{n} at {listen_address(n, env)}: {s}" for n, s in answers.items()), err=True
    )
    return 1


def _free_loopback_address() -> str:
    """Return a loopback address no one listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def init_registry(deadline: float) -> None:
    """Run the registry on loopback until it serves (migrated, bootstrap token registered)."""
    address = _free_loopback_address()
    env = {
        **os.environ,
        "EVENTFN_REGISTRY_LISTEN": address,
        "EVENTFN_REGISTRY_METRICS_LISTEN": "",
    }
    process = subprocess.Popen([sys.executable, "-m", "services.registry"], env=env)
    try:
        while health_status(address, timeout=1.0) != "SERVING":
            if process.poll() is not None:
                raise RuntimeError(f"the registry exited with code {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("the registry did not serve in time (database reachable?)")
            time.sleep(0.2)
        typer.echo("database schema migrated; bootstrap token registered")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


async def init_streams(deadline: float) -> None:
    """Create or update EVENTS, RETRY and DEAD, retrying while the NATS cluster forms."""
    import nats.errors

    from services.common.streams import open_streams

    settings = DataPlaneSettings()
    while True:
        try:
            nc, _ = await asyncio.wait_for(
                open_streams(settings, settings.nats_url, name="eventfn-init"), timeout=30
            )
        except (nats.errors.Error, OSError, TimeoutError) as error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"streams not ensured in time: {error!r}") from error
            typer.echo(f"NATS not ready ({error!r}); retrying", err=True)
            await asyncio.sleep(2)
            continue
        await nc.close()
        typer.echo(f"streams ensured with {settings.stream_replicas} replica(s)")
        return


def serve(
    service: Annotated[
        str | None,
        typer.Argument(help="registry, router, executor, retrier, or init (one-shot)."),
    ] = None,
    health: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Ask the service's gRPC health and exit 0 when it is serving (no service: "
            "whichever this container runs).",
        ),
    ] = False,
) -> None:
    """Run one eventfn service in this process (the image's entry point)."""
    if service is not None and service not in (*SERVICES, "init"):
        typer.echo(f"unknown service {service!r}: one of {', '.join(SERVICES)} or init", err=True)
        raise typer.Exit(2)
    if health:
        if service == "init":
            typer.echo("init is a one-shot step: it has no health to check", err=True)
            raise typer.Exit(2)
        raise typer.Exit(check(service))
    if service is None:
        typer.echo(f"name the service to run: one of {', '.join(SERVICES)} or init", err=True)
        raise typer.Exit(2)
    if service == "init":
        deadline = time.monotonic() + INIT_TIMEOUT_SECONDS
        try:
            init_registry(deadline)
            asyncio.run(init_streams(deadline))
        except (RuntimeError, TimeoutError) as error:
            typer.echo(f"init failed: {error}", err=True)
            raise typer.Exit(1) from error
        return
    # Run as `python -m services.<service>` would: its __main__ calls run_service.
    sys.argv = [f"services.{service}"]
    runpy.run_module(f"services.{service}", run_name="__main__", alter_sys=True)
