"""Operators scale by starting executor processes: they share the work, and killing one
with SIGKILL mid-load loses nothing (its unacked packs are redelivered to the other)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from google.protobuf import struct_pb2

from eventfn.registry.v1 import registry_pb2 as pb
from eventfn.type.v1 import types_pb2
from services.router.app import start_router
from services.router.settings import RouterSettings
from tests.pipeline.conftest import Sink
from tests.registry.conftest import SERVICE, Registry, auth

CODE = """
async function onTrack(event, settings) {
  const res = await fetch(settings.endpoint, {method: 'POST', body: JSON.stringify(event)})
  if (res.status >= 500) throw new RetryError('HTTP ' + res.status)
}
"""


@dataclass
class Cluster:
    """A router in-process and executor processes sharing one durable consumer."""

    registry: Registry
    http: httpx.AsyncClient
    write_key: str
    instance_id: str
    env: dict[str, str]
    logs: Path

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        """Start one executor process."""
        log = (self.logs / f"{name}.log").open("wb")
        return subprocess.Popen(
            [sys.executable, "-m", "services.executor"],
            env={**self.env, "EVENTFN_EXECUTOR_NAME": name},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def wait_consuming(self, nats_url: str, count: int) -> None:
        """Wait until `count` executors have pull requests waiting on the shared consumer."""
        import nats

        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            async with asyncio.timeout(60):
                while True:
                    try:
                        info = await js.consumer_info(
                            "EVENTS", self.env["EVENTFN_EXECUTOR_CONSUMER"]
                        )
                        if (info.num_waiting or 0) >= count:
                            return
                    except nats.js.errors.NotFoundError:
                        pass
                    await asyncio.sleep(0.05)
        finally:
            await nc.close()

    def packs_of(self, name: str) -> int:
        """Read how many packs a stopped executor handled from its log."""
        found = re.search(r"stopping after (\d+) packs", (self.logs / f"{name}.log").read_text())
        assert found, (self.logs / f"{name}.log").read_text()[-2000:]
        return int(found.group(1))

    async def send(self, start: int, count: int) -> None:
        """Send `count` events in batches of 100."""
        for i in range(start, start + count, 100):
            batch = [
                {"type": "track", "userId": "u", "event": "E", "messageId": f"s-{j}"}
                for j in range(i, min(i + 100, start + count))
            ]
            resp = await self.http.post(
                "/v1/batch", json={"batch": batch}, auth=(self.write_key, "")
            )
            assert resp.status_code == 200, resp.text


@pytest.fixture
async def cluster(
    registry: Registry, nats_url: str, sink: Sink, tmp_path: Path
) -> AsyncIterator[Cluster]:
    _, owner = await registry.workspace("Scale")
    source = (
        await registry.stub.CreateSource(pb.CreateSourceRequest(name="s"), metadata=auth(owner))
    ).source
    fn = await registry.stub.CreateFunction(
        pb.CreateFunctionRequest(
            name="Scale",
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
        pb.CreateInstanceRequest(function_id=fn.function.id, source_id=source.id, settings=values),
        metadata=auth(owner),
    )
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
        "EVENTFN_EXECUTOR_SUBJECTS": f"events.*.{ins.instance.id}",
        "EVENTFN_EXECUTOR_FETCH_PACKS": "4",
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
        await router.watcher.wait_until(lambda v: ins.instance.id in v.instances)
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}", timeout=30)
        stack.push_async_callback(http.aclose)
        yield Cluster(registry, http, source.write_key, ins.instance.id, env, tmp_path)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop an executor gracefully."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


async def test_two_executors_share_the_work_exactly(
    cluster: Cluster, sink: Sink, nats_url: str
) -> None:
    a, b = cluster.spawn("exec-a"), cluster.spawn("exec-b")
    try:
        await cluster.wait_consuming(nats_url, 2)
        await cluster.send(0, 4000)
        events = await sink.wait_for(4000, seconds=120)
    finally:
        stop(a)
        stop(b)
    ids = [e["messageId"] for e in events]
    assert sorted(set(ids)) == sorted(f"s-{i}" for i in range(4000))
    assert len(ids) == 4000, "no duplicates without a crash"
    packs_a, packs_b = cluster.packs_of("exec-a"), cluster.packs_of("exec-b")
    assert packs_a > 0 and packs_b > 0, (packs_a, packs_b)
    assert packs_a + packs_b == 40


async def test_sigkill_of_one_executor_loses_nothing(
    cluster: Cluster, sink: Sink, nats_url: str
) -> None:
    sink.delay = 0.01  # keep packs in flight in the executor we kill
    a, b = cluster.spawn("exec-a"), cluster.spawn("exec-b")
    try:
        await cluster.wait_consuming(nats_url, 2)
        await cluster.send(0, 2000)
        await sink.wait_for(200, seconds=120)
        a.send_signal(signal.SIGKILL)
        a.wait()
        sink.delay = 0
        await cluster.send(2000, 2000)
        events = await sink.wait_for(4000, seconds=120)
        await asyncio.sleep(0)  # let late duplicates land before counting
    finally:
        stop(b)
        if a.poll() is None:
            a.kill()
    ids = {e["messageId"] for e in sink.events()}
    assert ids == {f"s-{i}" for i in range(4000)}, f"missing: {4000 - len(ids)}"
    assert len(events) >= 4000
