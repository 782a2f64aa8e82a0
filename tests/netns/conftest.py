"""eventfn on several hosts of one machine: NATS nodes, router, executors and retrier each in a
network namespace of its own (tests/netns/hosts.py); PostgreSQL, the registry, the sink and the
load generator stay in the root namespace, on the bridge's address."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import nats
import nats.errors
import orjson
import pytest
import yaml
from aiohttp import web
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import registry_pb2_grpc
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.common import streams
from services.devtools.embedded import EmbeddedPostgres, nats_server_binary
from services.registry.app import start_registry
from services.registry.settings import RegistrySettings
from tests.eventually import eventually
from tests.netns.hosts import Host, Network, unavailable_reason

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP = "efn_netns-bootstrap-token-0123456789"
SERVICE = "svc_netns-service-token-0123456789"
SECRET_KEY = base64.b64encode(os.urandom(32)).decode()  # the deployment's master key
NATS_NODES = ("nats-1", "nats-2", "nats-3")
# What compose gives the nodes as EVENTFN_NATS_PASSWORD, here.
NATS_PASSWORD = "netns-test-password"
EXECUTORS = ("exec-1", "exec-2")
# The consumer redelivers what a killed executor held after this long (the test's function
# answers in milliseconds; production keeps the default, see docs/operations.md).
ACK_WAIT_SECONDS = 10

CODE = """
async function onTrack(event, settings) {
  const res = await fetch(settings.endpoint, {method: 'POST', body: JSON.stringify(event)})
  if (res.status >= 500) throw new RetryError('HTTP ' + res.status)
}
"""


@pytest.fixture(scope="module")
def network(request: pytest.FixtureRequest) -> Iterator[Network]:
    """Make the bridge; remove it and every host made on it afterwards, whatever happened.

    The hosts' logs go to a directory of their own (kept when a test failed, and named in the
    output), not pytest's, which a concurrent pytest run may rotate away.
    """
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    logs = Path(tempfile.mkdtemp(prefix="eventfn-netns-logs-"))
    print(f"netns hosts' logs: {logs}")
    net = Network(logs)
    failed = request.session.testsfailed
    try:
        net.open()
        yield net
    finally:
        net.close()
        if request.session.testsfailed == failed:
            shutil.rmtree(logs, ignore_errors=True)


@dataclass
class Sink:
    """The third-party API the function calls: records each event's messageId and time."""

    url: str = ""
    arrivals: list[tuple[float, str]] = field(default_factory=list)
    senders: list[str] = field(default_factory=list)  # the host address each came from
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        """Record the event and the host that sent it; answer 200."""
        event = orjson.loads(await request.read())
        async with self.changed:
            self.arrivals.append((time.monotonic(), event["messageId"]))
            self.senders.append(request.remote or "")
            self.changed.notify_all()
        return web.json_response({"ok": True})

    def sent_by_since(self, address: str, since: float) -> int:
        """Count the events a host delivered after a moment."""
        return sum(
            1
            for (t, _), sender in zip(self.arrivals, self.senders, strict=True)
            if t > since and sender == address
        )

    def unique(self) -> set[str]:
        """Return the distinct messageIds received."""
        return {m for _, m in self.arrivals}


@dataclass
class MultiHost:
    """The platform spread over hosts, and what the test drives it with."""

    network: Network
    nats_urls: list[str]
    env: dict[str, str]
    registry: registry_pb2_grpc.RegistryStub
    sink: Sink
    nc: NatsClient
    js: JetStreamContext
    write_key: str = ""
    instance_id: str = ""
    logs: Path = field(default_factory=Path)

    def host(self, role: str) -> Host:
        """Return the host of a role."""
        return self.network.hosts[role]

    def start_service(self, role: str, service: str, **extra: str) -> None:
        """Start a service on its host (`python -m services.<service>`)."""
        env = {**self.env, **extra}
        self.network.spawn(
            self.host(role), [sys.executable, "-m", f"services.{service}"], env, role
        )

    async def leader_of(self, stream: str) -> str:
        """Return the server name of the stream's current leader."""
        info = await eventually(
            lambda: self.js.stream_info(stream),
            f"a leader of {stream}",
            until=lambda i: i.cluster is not None and i.cluster.leader,
            seconds=60,
            ignoring=(nats.errors.Error,),
        )
        assert info.cluster is not None and info.cluster.leader
        return info.cluster.leader

    async def consumer(self) -> ConsumerInfo:
        """Return the executors' shared consumer."""
        return await self.js.consumer_info(streams.EVENTS_STREAM, "executor", timeout=3)

    async def wait_consuming(self, count: int, seconds: float = 90) -> None:
        """Wait until `count` executors have pull requests waiting."""
        await eventually(
            self.consumer,
            f"{count} executors pulling",
            until=lambda info: (info.num_waiting or 0) >= count,
            seconds=seconds,
            ignoring=(nats.errors.Error,),
        )


def _nats_config(compose_conf: str, node: str, addresses: dict[str, str], store: Path) -> str:
    """Turn compose.yaml's NATS config into this host's (compose unescapes `$$`)."""
    text = compose_conf.replace("$$", "$")
    text = text.replace("store_dir: /data", f"store_dir: {json.dumps(str(store))}")
    for peer, address in addresses.items():
        text = text.replace(f"{peer}:6222", f"{address}:6222")
    return text


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(  # pyright: ignore[reportAttributeAccessIssue]
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def wait_serving(address: str, what: str, seconds: float = 90) -> None:
    """Wait until the gRPC health check at address says SERVING."""
    await eventually(
        lambda: asyncio.to_thread(_serving, address), f"{what} serving", seconds=seconds
    )


@pytest.fixture(scope="module")
async def multihost(network: Network) -> AsyncIterator[MultiHost]:
    """Start PostgreSQL and the registry (root namespace), 3 NATS nodes, the router, two
    executors and the retrier (a host each), and a source with one instance to a sink."""
    # PostgreSQL runs as its own user and reads its hba file from here.
    work = Path(tempfile.mkdtemp(prefix="eventfn-netns-"))
    os.chmod(work, 0o755)
    for role in (*NATS_NODES, "router", *EXECUTORS, "retrier"):
        network.add(role)
    async with AsyncExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        hba = work / "pg_hba.conf"
        hba.write_text(f"host all all 127.0.0.1/32 trust\nhost all all {network.cidr} trust\n")
        hba.chmod(0o644)
        postgres = EmbeddedPostgres(
            work / "postgres",
            options={
                "listen_addresses": f"127.0.0.1,{network.gateway}",
                "hba_file": str(hba),
                "max_connections": "200",
            },
            stop_with_parent=True,
        )
        await asyncio.to_thread(postgres.start)
        stack.callback(postgres.stop)
        # The hosts' processes stop before PostgreSQL and before their files are removed.
        stack.callback(lambda: [network.stop(host, timeout=30) for host in network.hosts.values()])
        database_url = f"postgresql://{postgres.user}@{network.gateway}:{postgres.port}/eventfn"

        registry = await start_registry(
            RegistrySettings(
                database_url=database_url,
                registry_listen=f"{network.gateway}:0",
                registry_metrics_listen="",
                state_dir=work / "registry",
                secret_key=SECRET_KEY,
                bootstrap_token=BOOTSTRAP,
                service_token=SERVICE,
            ),
            stack,
        )
        registry_addr = f"{network.gateway}:{registry.port}"
        channel = grpc.aio.insecure_channel(registry_addr)
        stack.push_async_callback(channel.close)
        stub = registry_pb2_grpc.RegistryStub(channel)

        # The NATS cluster: compose.yaml's node config, one node per host.
        compose_conf = yaml.safe_load((REPO / "compose.yaml").read_text())["configs"]["nats-conf"][
            "content"
        ]
        addresses = {name: network.hosts[name].address for name in NATS_NODES}
        for name in NATS_NODES:
            path = work / f"{name}.conf"
            path.write_text(_nats_config(compose_conf, name, addresses, work / f"{name}-store"))
            network.spawn(
                network.hosts[name],
                [str(nats_server_binary()), "-c", str(path)],
                {**os.environ, "NATS_SERVER_NAME": name, "NATS_PASSWORD": NATS_PASSWORD},
                name,
            )
        nats_urls = [f"nats://eventfn:{NATS_PASSWORD}@{addresses[n]}:4222" for n in NATS_NODES]

        sink = Sink()
        app = web.Application()

        async def handler(request: web.Request) -> web.Response:
            return await sink.handle(request)

        app.router.add_route("POST", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, network.gateway, 0)
        await site.start()
        sink.url = f"http://{network.gateway}:{runner.addresses[0][1]}/hook"

        env = {
            **os.environ,
            "EVENTFN_NATS_URL": ",".join(nats_urls),
            "EVENTFN_STREAM_REPLICAS": "3",
            "EVENTFN_REGISTRY_ADDR": registry_addr,
            "EVENTFN_SERVICE_TOKEN": SERVICE,
            "EVENTFN_BOOTSTRAP_TOKEN": BOOTSTRAP,
            # Every registry of a deployment shares the master key (compose.yaml requires it).
            "EVENTFN_SECRET_KEY": SECRET_KEY,
            "EVENTFN_DATABASE_URL": database_url,
            "EVENTFN_STATE_DIR": str(work / "state"),
            "EVENTFN_ROUTER_LISTEN": "0.0.0.0:50052",
            "EVENTFN_ROUTER_HTTP_LISTEN": "0.0.0.0:8088",
            "EVENTFN_EXECUTOR_LISTEN": "0.0.0.0:50053",
            "EVENTFN_RETRIER_LISTEN": "0.0.0.0:50054",
            "EVENTFN_EXECUTOR_WORKERS": "1",
            "EVENTFN_EGRESS_ALLOW": network.cidr,
            "EVENTFN_EXECUTOR_ACK_WAIT_SECONDS": str(ACK_WAIT_SECONDS),
            "EVENTFN_EXECUTOR_RECORDS_FLUSH_SECONDS": "1",
        }
        for service in ("REGISTRY", "ROUTER", "EXECUTOR", "RETRIER"):
            env[f"EVENTFN_{service}_METRICS_LISTEN"] = ""

        # The deployment's one-shot step, on the router's host: migrations (already done by
        # the registry above: a no-op), bootstrap token, R3 streams once the cluster forms.
        init = network.spawn(
            network.hosts["router"],
            [sys.executable, "-m", "services.cli.main", "serve", "init"],
            env,
            "init",
        )
        code = await asyncio.to_thread(init.wait, 240)
        assert code == 0, (network.logs / "init.log").read_text()[-3000:]

        nc = await nats.connect(
            servers=nats_urls,
            ping_interval=2,
            max_outstanding_pings=2,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        stack.push_async_callback(nc.close)
        platform = MultiHost(
            network, nats_urls, env, stub, sink, nc, nc.jetstream(timeout=5), logs=network.logs
        )

        auth = (("authorization", f"Bearer {BOOTSTRAP}"),)
        workspace = await stub.CreateWorkspace(
            pb.CreateWorkspaceRequest(workspace=res.Workspace(display_name="Netns")), metadata=auth
        )
        owner = (("authorization", f"Bearer {workspace.token}"),)
        source = (
            await stub.CreateSource(
                pb.CreateSourceRequest(
                    parent=workspace.workspace.name, source=res.Source(display_name="web")
                ),
                metadata=owner,
            )
        ).source
        function = await stub.CreateFunction(
            pb.CreateFunctionRequest(
                parent=workspace.workspace.name,
                function=res.DestinationFunction(display_name="Hook"),
                code=CODE,
                settings=[
                    types_pb2.SettingDefinition(
                        name="endpoint", type=types_pb2.SETTING_TYPE_STRING, required=True
                    )
                ],
            ),
            metadata=owner,
        )
        values = struct_pb2.Struct()
        values.update({"endpoint": sink.url})
        instance = await stub.CreateInstance(
            pb.CreateInstanceRequest(
                parent=workspace.workspace.name,
                instance=res.Instance(
                    function=function.function.name, source=source.name, settings=values
                ),
            ),
            metadata=owner,
        )
        platform.write_key = source.write_key
        platform.instance_id = instance.instance.name.rsplit("/", 1)[-1]

        platform.start_service("router", "router")
        for name in EXECUTORS:
            platform.start_service(name, "executor", EVENTFN_EXECUTOR_NAME=name)
        platform.start_service("retrier", "retrier")
        await wait_serving(f"{network.hosts['router'].address}:50052", "router")
        for name in EXECUTORS:
            await wait_serving(f"{network.hosts[name].address}:50053", name)
        await wait_serving(f"{network.hosts['retrier'].address}:50054", "retrier")
        await platform.wait_consuming(len(EXECUTORS))
        yield platform


async def post_batch(client: httpx.AsyncClient, write_key: str, batch: list[dict[str, Any]]) -> int:
    """Send one /v1/batch request; return its HTTP status (0: no answer in time)."""
    try:
        response = await client.post("/v1/batch", json={"batch": batch}, auth=(write_key, ""))
    except httpx.HTTPError:
        return 0
    return response.status_code
