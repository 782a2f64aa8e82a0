"""Operators scale by starting executor processes: they share the work, and killing one
with SIGKILL mid-load loses nothing (its unacked packs are redelivered to the other)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from google.protobuf import struct_pb2
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.common import streams
from services.executor.defer import DEFER_MAX_SECONDS
from services.router.app import start_router
from services.router.settings import RouterSettings
from tests.eventually import eventually
from tests.pipeline.conftest import Sink
from tests.registry.conftest import SERVICE, Registry, auth

CODE = """
async function onTrack(event, settings) {
  const res = await fetch(settings.endpoint, {method: 'POST', body: JSON.stringify(event)})
  if (res.status >= 500) throw new RetryError('HTTP ' + res.status)
}
"""

# Executor settings the duplicate bound of the SIGKILL test derives from.
MAX_INFLIGHT_PACKS = 4  # packs an executor holds unsettled at most (it fetches no more)
EVENTS_PER_PACK = 100  # Cluster.send posts batches of this many: the router packs each as one


@dataclass
class Cluster:
    """A router in-process and executor processes sharing one durable consumer."""

    registry: Registry
    http: httpx.AsyncClient
    write_key: str
    instance_id: str
    env: dict[str, str]
    logs: Path
    js: JetStreamContext

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        """Start one executor process."""
        log = (self.logs / f"{name}.log").open("wb")
        return subprocess.Popen(
            [sys.executable, "-m", "services.executor"],
            env={**self.env, "EVENTFN_EXECUTOR_NAME": name},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def consumer(self) -> ConsumerInfo:
        """Return the shared consumer's info (NotFoundError until an executor created it)."""
        return await self.js.consumer_info(
            streams.EVENTS_STREAM, self.env["EVENTFN_EXECUTOR_CONSUMER"]
        )

    async def wait_consuming(self, count: int) -> None:
        """Wait until `count` executors have pull requests waiting on the shared consumer."""
        await eventually(
            self.consumer,
            f"{count} executors pulling from the shared consumer",
            until=lambda info: (info.num_waiting or 0) >= count,
            seconds=60,
            ignoring=(NotFoundError,),
        )

    async def wait_settled(self) -> ConsumerInfo:
        """Wait until the shared consumer has no pack left to deliver or awaiting an ack:
        no redelivery can come after this, so what the sink has then is final."""
        return await eventually(
            self.consumer,
            "every pack delivered and acked",
            until=lambda info: info.num_pending == 0 and info.num_ack_pending == 0,
            seconds=4 * DEFER_MAX_SECONDS,  # a pack handed back waits up to this, maybe twice
        )

    def packs_of(self, name: str) -> int:
        """Read how many packs a stopped executor handled from its log."""
        found = re.search(r"stopping after (\d+) packs", (self.logs / f"{name}.log").read_text())
        assert found, (self.logs / f"{name}.log").read_text()[-2000:]
        return int(found.group(1))

    async def send(self, start: int, count: int) -> None:
        """Send `count` events in batches of EVENTS_PER_PACK (one pack each)."""
        for i in range(start, start + count, EVENTS_PER_PACK):
            batch = [
                {"type": "track", "userId": "u", "event": "E", "messageId": f"s-{j}"}
                for j in range(i, min(i + EVENTS_PER_PACK, start + count))
            ]
            resp = await self.http.post(
                "/v1/batch", json={"batch": batch}, auth=(self.write_key, "")
            )
            assert resp.status_code == 200, resp.text


@pytest.fixture
async def cluster(
    registry: Registry, nats_url: str, nats_client: NatsClient, sink: Sink, tmp_path: Path
) -> AsyncIterator[Cluster]:
    ws_id, owner = await registry.workspace("Scale")
    parent = f"workspaces/{ws_id}"
    source = (
        await registry.stub.CreateSource(
            pb.CreateSourceRequest(parent=parent, source=res.Source(display_name="s")),
            metadata=auth(owner),
        )
    ).source
    fn = await registry.stub.CreateFunction(
        pb.CreateFunctionRequest(
            parent=parent,
            function=res.DestinationFunction(display_name="Scale"),
            code=CODE,
            settings=[
                types_pb2.SettingDefinition(name="endpoint", type=types_pb2.SETTING_TYPE_STRING)
            ],
        ),
        metadata=auth(owner),
    )
    values = struct_pb2.Struct()
    values.update({"endpoint": sink.url})
    ins = await registry.stub.CreateInstance(
        pb.CreateInstanceRequest(
            parent=parent,
            instance=res.Instance(function=fn.function.name, source=source.name, settings=values),
        ),
        metadata=auth(owner),
    )
    iid = ins.instance.name.rsplit("/", 1)[-1]
    addr = f"127.0.0.1:{registry.port}"
    env = {
        **os.environ,
        "EVENTFN_NATS_URL": nats_url,
        "EVENTFN_REGISTRY_ADDR": addr,
        "EVENTFN_DATABASE_URL": registry.database_url,
        "EVENTFN_SERVICE_TOKEN": SERVICE,
        "EVENTFN_EXECUTOR_LISTEN": "127.0.0.1:0",
        "EVENTFN_EXECUTOR_WORKERS": "1",
        "EVENTFN_EGRESS_ALLOW": "127.0.0.1/32",
        "EVENTFN_EXECUTOR_ACK_WAIT_SECONDS": "3",
        "EVENTFN_EXECUTOR_CONSUMER": f"scale-{uuid.uuid4().hex[:8]}",
        "EVENTFN_EXECUTOR_SUBJECTS": f"events.*.{iid}",
        "EVENTFN_EXECUTOR_FETCH_PACKS": str(MAX_INFLIGHT_PACKS),
        "EVENTFN_EXECUTOR_MAX_INFLIGHT_PACKS": str(MAX_INFLIGHT_PACKS),
    }
    async with AsyncExitStack() as stack:
        router = await start_router(
            RouterSettings(
                router_listen="127.0.0.1:0",
                router_http_listen="127.0.0.1:0",
                nats_url=nats_url,
                registry_addr=addr,
                service_token=SERVICE,
            ),
            stack,
        )
        await router.watcher.wait_until(lambda v: iid in v.instances)
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}", timeout=30)
        stack.push_async_callback(http.aclose)
        yield Cluster(
            registry,
            http,
            source.write_key,
            iid,
            env,
            tmp_path,
            nats_client.jetstream(),
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop an executor gracefully."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


async def test_two_executors_share_the_work_exactly(cluster: Cluster, sink: Sink) -> None:
    a, b = cluster.spawn("exec-a"), cluster.spawn("exec-b")
    try:
        await cluster.wait_consuming(2)
        await cluster.send(0, 4000)
        # Each executor runs 2 packs at a time (its instance's share of 4) and hands the
        # others back for waits doubling up to DEFER_MAX_SECONDS: on a busy machine a pack can
        # come back at the longest wait more than once before it gets a slot.
        await sink.wait_for(4000, seconds=4 * DEFER_MAX_SECONDS)
        await cluster.wait_settled()  # a late redelivery would land before this
    finally:
        stop(a)
        stop(b)
    counts = Counter(e["messageId"] for e in sink.events())
    assert counts.keys() == {f"s-{i}" for i in range(4000)}
    assert counts.total() == 4000, f"no duplicates without a crash: {counts.most_common(3)}"
    packs_a, packs_b = cluster.packs_of("exec-a"), cluster.packs_of("exec-b")
    assert packs_a > 0 and packs_b > 0, (packs_a, packs_b)
    assert packs_a + packs_b == 4000 // EVENTS_PER_PACK


def ports_to(process: subprocess.Popen[bytes], port: int) -> set[int]:
    """Return the local ports of the connections an executor holds open to `port`: its V8
    workers (child processes) make the function's requests, on keep-alive connections."""
    root = psutil.Process(process.pid)
    ports: set[int] = set()
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            connections = proc.net_connections("tcp")
            ports |= {c.laddr.port for c in connections if c.raddr and c.raddr.port == port}
    return ports


async def test_sigkill_of_one_executor_loses_nothing(cluster: Cluster, sink: Sink) -> None:
    # Requests reach the sink, but no answer leaves it until the gate opens: no pack can be
    # acked, so whatever exec-a delivered is certainly unacked when it dies.
    sink.gate = asyncio.Event()
    sink_port = int(sink.url.rsplit(":", 1)[1])
    a, b = cluster.spawn("exec-a"), cluster.spawn("exec-b")
    try:
        await cluster.wait_consuming(2)
        await cluster.send(0, 2000)  # 20 packs; each executor holds at most 4 of them

        def held_by_a() -> list[str]:
            mine = ports_to(a, sink_port)
            return [
                e["messageId"] for e, p in zip(sink.bodies, sink.peers, strict=True) if p in mine
            ]

        delivered_by_a = await eventually(held_by_a, "exec-a delivering events of its packs")
        a.send_signal(signal.SIGKILL)
        a.wait()
        sink.gate.set()
        await cluster.send(2000, 2000)  # only exec-b is alive for these
        # exec-b runs 2 packs at a time (its instance's share of 4), handing the others back
        # as the other test says.
        await sink.wait_for(4000, seconds=4 * DEFER_MAX_SECONDS)
        # exec-a's packs come back after the ack wait: count once nothing is left unacked.
        await cluster.wait_settled()
    finally:
        sink.gate.set()
        stop(b)
        if a.poll() is None:
            a.kill()
    counts = Counter(e["messageId"] for e in sink.events())
    duplicates = counts.total() - len(counts)
    print(f"exec-a had delivered {len(delivered_by_a)} events; {duplicates} duplicates")
    sent = {f"s-{i}" for i in range(4000)}
    missing, unknown = sent - counts.keys(), counts.keys() - sent
    assert not missing and not unknown, (
        f"{len(missing)} missing {sorted(missing)[:10]}; unknown {sorted(unknown)[:10]}"
    )
    after = {f"s-{i}" for i in range(2000, 4000)}
    repeated = {i: n for i, n in counts.items() if i in after and n != 1}
    assert not repeated, (
        f"sent after the kill, yet delivered more than once: {repeated} "
        f"({duplicates} duplicates in all)"
    )
    # What exec-a delivered and could not ack comes again, once, from exec-b.
    again = {i: counts[i] for i in delivered_by_a}
    assert set(again.values()) == {2}, f"{again} ({duplicates} duplicates in all)"
    # Nothing else is repeated: only exec-a's in-flight packs are redelivered. It never holds
    # more than MAX_INFLIGHT_PACKS unsettled (it fetches no more), and each pack is one
    # /v1/batch request of EVENTS_PER_PACK events: at most 4 x 100 = 400 duplicates.
    assert max(counts.values()) <= 2, f"redelivered more than once: {counts.most_common(5)}"
    bound = MAX_INFLIGHT_PACKS * EVENTS_PER_PACK
    assert len(delivered_by_a) <= duplicates <= bound, (
        f"{duplicates} duplicates: exec-a had delivered {len(delivered_by_a)}, and could hold "
        f"{MAX_INFLIGHT_PACKS} packs of {EVENTS_PER_PACK} events in flight"
    )
