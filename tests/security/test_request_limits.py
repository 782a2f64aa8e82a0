"""Requests the services cannot answer as asked get INVALID_ARGUMENT naming the field, not
INTERNAL (logged with a correlation id, as for a bug), nor a reply past gRPC's limits: a time
past the year 9999 (a Timestamp holds more than a datetime) in the executor's delivery lists
and the registry's audit log, and a messageId of megabytes in GetTrace (quoted back in
NOT_FOUND past gRPC's metadata limit: RESOURCE_EXHAUSTED)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from eventfn_api.registry.v1 import registry_pb2 as rpb
from tests.pipeline.conftest import Platform, platform, sink
from tests.registry.conftest import auth, registry

__all__ = ["platform", "registry", "sink"]

FAR = timestamp_pb2.Timestamp(seconds=10**12)
YEAR_ONE = timestamp_pb2.Timestamp(seconds=-62135596800 + 60)  # 0001-01-01T00:01:00Z


async def refusal(call: Any) -> tuple[grpc.StatusCode, str]:
    """Await a call that must fail; return its status code and details."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


DELIVERY_READS = ["ListDeliveryMinutes", "ListDeliveryFailures", "GetDeliveryStats"]


async def delivery_read(platform: Platform, rpc: str, **times: timestamp_pb2.Timestamp) -> Any:
    """Call one of the executor's delivery reads of a new instance with these times."""
    instance = platform.instance_name(
        await platform.instance("async function onTrack() {}", "http://127.0.0.1:9/")
    )
    if rpc == "GetDeliveryStats":
        request: Any = executor_pb2.GetDeliveryStatsRequest(name=f"{instance}/deliveryStats")
    else:
        request = getattr(executor_pb2, f"{rpc}Request")(parent=instance)
    for field, value in times.items():
        getattr(request, field).CopyFrom(value)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        stub = executor_pb2_grpc.ExecutorStub(channel)
        return await getattr(stub, rpc)(request, metadata=auth(platform.owner))


@pytest.mark.parametrize("rpc", DELIVERY_READS)
@pytest.mark.parametrize("field", ["start_time", "end_time"])
async def test_a_delivery_time_past_9999_is_invalid_naming_the_field(
    platform: Platform, rpc: str, field: str
) -> None:
    code, details = await refusal(delivery_read(platform, rpc, **{field: FAR}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details, (code, details)


@pytest.mark.parametrize("rpc", DELIVERY_READS)
async def test_an_end_time_in_the_year_one_is_a_period_from_its_start(
    platform: Platform, rpc: str
) -> None:
    # The default period before it started before time: INTERNAL. Nothing was delivered then.
    await delivery_read(platform, rpc, end_time=YEAR_ONE)


async def test_an_audit_time_past_9999_is_invalid_naming_the_field(platform: Platform) -> None:
    code, details = await refusal(
        platform.registry.stub.ListAuditEvents(
            rpb.ListAuditEventsRequest(parent=platform.workspace, start_time=FAR),
            metadata=auth(platform.owner),
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "start_time" in details, (code, details)


async def test_a_messageid_of_megabytes_is_refused_without_being_quoted(
    platform: Platform,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        code, details = await refusal(
            executor_pb2_grpc.ExecutorStub(channel).GetTrace(
                executor_pb2.GetTraceRequest(parent=platform.workspace, message_id="m" * 3_000_000),
                metadata=auth(platform.owner),
            )
        )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "256 characters" in details, (
        code,
        details[:200],
    )
