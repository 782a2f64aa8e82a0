"""GetTrace's cost was chosen by the sender of events: a messageId lookup read up to 100 trace
ids and then up to 2,000 messages of each, one JetStream request per message, on the
executor's event loop and on the NATS server every tenant's events go through (one lookup:
7.7 s wall, 2.9 s CPU in the executor, 2.9 s in nats). Now a lookup lists the instances that
got the messageId (one request), asks about each of the caller's workspace once (at most
MAX_INSTANCE_CHECKS), sorts the caller's journeys (one request) and reads one (one request),
every read within one ReadBudget: a journey padded beyond it is answered cut short, marked
TRUNCATED.

The lookup runs as the executor runs it (`get_trace`), with a stand-in for the registry's
answers (the caller may read one instance) so that the cost measured is the trace store's."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field

import grpc
import orjson
import psutil
import pytest
from nats.aio.client import Client as NatsClient

from eventfn_api.executor.v1 import executor_pb2 as pb
from eventfn_api.registry.v1 import registry_pb2, resources_pb2
from services.common.errors import FailedPrecondition, NotFound
from services.common.trace_store import (
    READ_BYTES,
    READ_MESSAGES,
    IndexKey,
    ReadBudget,
    ensure_stream,
    read_trace,
    trace_subject,
)
from services.devtools.embedded import EmbeddedNats
from services.executor.traces import MAX_INSTANCE_CHECKS, TRUNCATED, get_trace

BACKGROUND = int(os.environ.get("BACKGROUND", "50000"))  # other tenants' traces in the hour
SEEDED_TRACES = 100
MESSAGES_PER_TRACE = 200
WORKSPACE = "ws_victim"


@dataclass
class Registry:
    """The registry's answers: the caller is of WORKSPACE and may read `readable` only."""

    readable: set[str]
    asked: list[str] = field(default_factory=list)

    async def whoami(self, context: object) -> registry_pb2.WhoAmIResponse:
        """Answer WhoAmI."""
        return registry_pb2.WhoAmIResponse(
            workspace=resources_pb2.Workspace(name=f"workspaces/{WORKSPACE}")
        )

    def workspace_of(self, instance_id: str) -> str:
        """Name an instance's workspace as the executor's configuration does: the stranger's
        is another workspace's."""
        return "ws_stranger" if instance_id.startswith("ins_stranger") else WORKSPACE

    async def instance(self, context: object, name: str) -> resources_pb2.Instance:
        """Answer GetInstance."""
        self.asked.append(name)
        if name.rsplit("/", 1)[-1] not in self.readable:
            raise NotFound("instance", name)
        return resources_pb2.Instance(name=name, source=f"workspaces/{WORKSPACE}/sources/src_v")

    async def readable_instance(self, context: object, name: str) -> resources_pb2.Instance | None:
        """Answer GetInstance, None for an instance not the caller's to see."""
        try:
            return await self.instance(context, name)
        except NotFound:
            return None


def span(trace_id: str, name: str, attributes: dict[str, object]) -> bytes:
    """A stored message of one span."""
    now = time.time_ns()
    return orjson.dumps(
        [
            {
                "trace_id": trace_id,
                "span_id": uuid.uuid4().hex[:16],
                "parent_id": "",
                "name": name,
                "service": "eventfn-executor",
                "kind": "INTERNAL",
                "start": now,
                "end": now + 1000,
                "status": "UNSET",
                "attributes": attributes,
                "events": [],
                "links": [],
            }
        ]
    )


class Cost:
    """Wall time, this process's CPU (the executor's part) and the NATS server's CPU."""

    def __init__(self, nats_server: EmbeddedNats) -> None:
        self._nats = psutil.Process(int(nats_server.pid_path.read_text().strip()))

    def __enter__(self) -> Cost:
        self._started = (time.monotonic(), time.process_time(), self._nats_cpu())
        return self

    def __exit__(self, *_: object) -> None:
        wall, here, nats = self._started
        self.wall = time.monotonic() - wall
        self.here = time.process_time() - here
        self.nats = self._nats_cpu() - nats
        print(f"\nwall={self.wall:.3f}s executor_cpu={self.here:.3f}s nats_cpu={self.nats:.3f}s")

    def _nats_cpu(self) -> float:
        times = self._nats.cpu_times()
        return times.user + times.system


async def test_one_trace_lookup_costs_little(
    nats_client: NatsClient, nats_server: EmbeddedNats
) -> None:
    nc, js = nats_client, nats_client.jetstream()
    await ensure_stream(js, 3600)
    run = uuid.uuid4().hex[:8]
    message_id = f"order-42-{run}"
    for i in range(BACKGROUND):
        key = IndexKey(f"other-{run}-{i}", f"ins_{run}{i % 500}")
        await nc.publish(trace_subject(f"{run}{i:024x}", key), b"[]")
    # The hostile sender's instance: the messageId in 100 traces, each with many messages.
    stranger = f"ins_stranger{run}"
    for t in range(SEEDED_TRACES):
        tid = f"{run}{t + 1:08x}" + "f" * 16
        for m in range(MESSAGES_PER_TRACE):
            key = IndexKey(message_id if m == 0 else f"pad-{run}-{t}-{m}", stranger)
            await nc.publish(trace_subject(tid, key), b"")
    mine, own = f"ins_mine{run}", uuid.uuid4().hex
    invoke = {"eventfn.instance_id": mine, "eventfn.message_ids": [message_id]}
    # Acknowledged: stored, and so is everything published before it.
    await js.publish(trace_subject(own, IndexKey(message_id, mine)), span(own, "invoke", invoke))
    registry = Registry({mine})
    request = pb.GetTraceRequest(parent=f"workspaces/{WORKSPACE}", message_id=message_id)

    with Cost(nats_server) as cost:
        found = await get_trace(js, registry, registry.workspace_of, request, None)  # type: ignore[arg-type]
    assert found.trace_id == own and [s.name for s in found.spans] == ["invoke"]
    # Only about the caller's: the stranger's instance is another workspace's.
    assert registry.asked == [f"workspaces/{WORKSPACE}/instances/{mine}"]
    assert cost.wall < 1.0, f"one GetTrace by messageId: {cost.wall:.2f}s wall"


async def test_a_journey_padded_beyond_the_budget_is_answered_cut_short(
    nats_client: NatsClient, nats_server: EmbeddedNats
) -> None:
    # A sender chooses the trace id its events continue: a stranger can pad the caller's.
    nc, js = nats_client, nats_client.jetstream()
    await ensure_stream(js, 3600)
    run = uuid.uuid4().hex[:8]
    mine, own, message_id = f"ins_mine{run}", uuid.uuid4().hex, f"order-{run}"
    invoke = {"eventfn.instance_id": mine, "eventfn.message_ids": [message_id]}
    await nc.publish(trace_subject(own, IndexKey(message_id, mine)), span(own, "invoke", invoke))
    for _ in range(3 * READ_MESSAGES):
        await nc.publish(trace_subject(own), span(own, "padding", {}))
    await js.publish(trace_subject(own), span(own, "padding", {}))
    registry = Registry({mine})

    for request in (
        pb.GetTraceRequest(parent=f"workspaces/{WORKSPACE}", trace_id=own),
        pb.GetTraceRequest(parent=f"workspaces/{WORKSPACE}", message_id=message_id),
    ):
        with Cost(nats_server) as cost:
            found = await get_trace(js, registry, registry.workspace_of, request, None)  # type: ignore[arg-type]
        assert found.trace_id == own
        assert [s.name for s in found.spans] == ["invoke", TRUNCATED]
        assert cost.wall < 1.0, f"one GetTrace of a padded trace: {cost.wall:.2f}s wall"
    budget = ReadBudget()
    stored = await read_trace(js, own, budget)
    assert not stored.complete and budget.messages == 0  # READ_MESSAGES read, no more


async def test_a_trace_of_large_messages_is_read_up_to_the_byte_budget(
    nats_client: NatsClient,
) -> None:
    nc, js = nats_client, nats_client.jetstream()
    await ensure_stream(js, 3600)
    trace_id = uuid.uuid4().hex
    large = span(trace_id, "large", {"padding": "x" * 500_000})
    for _ in range(2 * READ_BYTES // len(large)):
        await nc.publish(trace_subject(trace_id), large)
    await js.publish(trace_subject(trace_id), large)
    budget = ReadBudget()
    stored = await read_trace(js, trace_id, budget)
    assert not stored.complete
    # The server stops once it has sent more than asked: by less than one message (1 MiB).
    assert READ_BYTES < len(stored.spans) * len(large) <= READ_BYTES + len(large)
    assert budget.messages > 0  # the bytes ended it


async def test_a_messageid_of_too_many_instances_is_refused_before_asking_about_them(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    await ensure_stream(js, 3600)
    run = uuid.uuid4().hex[:8]
    message_id = f"order-{run}"
    for i in range(MAX_INSTANCE_CHECKS + 1):
        key = IndexKey(message_id, f"ins_{run}{i}")
        await js.publish(trace_subject(uuid.uuid4().hex, key), b"[]")
    registry = Registry(set())
    request = pb.GetTraceRequest(parent=f"workspaces/{WORKSPACE}", message_id=message_id)
    with pytest.raises(FailedPrecondition) as refused:
        await get_trace(js, registry, registry.workspace_of, request, None)  # type: ignore[arg-type]
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "by its trace id" in refused.value.message
    assert registry.asked == []
