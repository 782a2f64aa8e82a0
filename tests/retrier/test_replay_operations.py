"""Replays are long-running operations (issue 13): a retry with the same request_id answers the
same operation and replays once; operations are read through google.longrunning.Operations by
the members who may see their instance; an operation a stopped retrier left unfinished is
taken over by the next."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import asdict

import grpc
import orjson
import pytest
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2

from eventfn_api.registry.v1 import registry_pb2 as rpb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.retrier.v1 import retrier_pb2 as pb
from services.retrier.operations import ReplayRecord
from tests.pipeline.conftest import Platform, Sink
from tests.registry.conftest import auth
from tests.retrier.conftest import LETTER_IDS, StartRetrier, lid
from tests.retrier.test_replay_once import dead_letters, dead_pack, delivered, settled


async def done(stub, name: str, md) -> operations_pb2.Operation:
    """Wait for an operation to finish."""
    while True:
        operation = await stub.operations.WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=name, timeout=duration_pb2.Duration(seconds=5)
            ),
            metadata=md,
        )
        if operation.done:
            return operation


async def test_a_replay_retried_with_its_request_id_is_one_operation_replayed_once(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    ids = ["op-0", "op-1"]
    iid, _, stub, _ = await dead_pack(platform, sink, start_retrier_on, ids)
    md = auth(platform.owner)
    before = len(sink.bodies)
    request = pb.ReplayDeadLettersRequest(
        parent=platform.instance_name(iid), request_id=str(uuid.uuid4())
    )
    first = await stub.ReplayDeadLetters(request, metadata=md)  # the reply is "lost"
    assert first.name.startswith(f"{platform.workspace}/operations/")
    again = await stub.ReplayDeadLetters(request, metadata=md)
    assert again.name == first.name
    # A member who may read the instance but not replay gets no operation for its request_id.
    reader = await platform.registry.member(
        platform.owner, "replay-reader@ops.io", res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)
    )
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.ReplayDeadLetters(request, metadata=auth(reader))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finished = await done(stub, first.name, md)
    result = pb.ReplayDeadLettersResponse()
    assert finished.response.Unpack(result) and result.replayed == 2
    metadata = pb.ReplayDeadLettersMetadata()
    assert finished.metadata.Unpack(metadata)
    assert (metadata.total, metadata.replayed) == (2, 2) and metadata.HasField("end_time")
    # Retried after it finished: still the same operation, nothing replayed twice.
    assert (await stub.ReplayDeadLetters(request, metadata=md)).name == first.name
    await settled(sink, before + 2)
    assert delivered(sink, before) == Counter(ids)
    assert await dead_letters(stub, platform.owner, platform.instance_name(iid)) == []
    # The same request_id for another request is refused; one that is not a UUID too.
    changed = pb.ReplayDeadLettersRequest()
    changed.CopyFrom(request)
    changed.start_time.GetCurrentTime()
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await stub.ReplayDeadLetters(changed, metadata=md)
    assert reused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in (reused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.ReplayDeadLetters(
            pb.ReplayDeadLettersRequest(parent=request.parent, request_id="again"), metadata=md
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_operations_are_read_by_those_who_may_see_their_instance(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    iid, _, stub, _ = await dead_pack(platform, sink, start_retrier_on, ["seen-0"])
    md = auth(platform.owner)
    operation = await stub.ReplayDeadLetters(
        pb.ReplayDeadLettersRequest(parent=platform.instance_name(iid)), metadata=md
    )
    finished = await done(stub, operation.name, md)
    got = await stub.operations.GetOperation(
        operations_pb2.GetOperationRequest(name=operation.name), metadata=md
    )
    assert got == finished
    listed = await stub.operations.ListOperations(
        operations_pb2.ListOperationsRequest(name=f"{platform.workspace}/operations"), metadata=md
    )
    assert operation.name in [o.name for o in listed.operations]
    # Another workspace, and a member who may not read the instance: NOT_FOUND, alike.
    _, stranger = await platform.registry.workspace("Stranger ops")
    other_fn = await platform.registry.stub.CreateFunction(
        rpb.CreateFunctionRequest(
            parent=platform.workspace,
            function=res.DestinationFunction(display_name="Unrelated"),
            code="async function onTrack() {}",
        ),
        metadata=md,
    )
    reader = await platform.registry.member(
        platform.owner,
        "reader@ops.io",
        res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY, functions=[other_fn.function.name]),
    )
    for token in (stranger, reader):
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await stub.operations.GetOperation(
                operations_pb2.GetOperationRequest(name=operation.name), metadata=auth(token)
            )
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await stub.operations.GetOperation(
            operations_pb2.GetOperationRequest(name="operations/x"), metadata=md
        )
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as cancel:
        await stub.operations.CancelOperation(
            operations_pb2.CancelOperationRequest(name=operation.name), metadata=md
        )
    assert cancel.value.code() == grpc.StatusCode.UNIMPLEMENTED
    await stub.operations.DeleteOperation(
        operations_pb2.DeleteOperationRequest(name=operation.name), metadata=md
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.operations.GetOperation(
            operations_pb2.GetOperationRequest(name=operation.name), metadata=md
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_abandoned_replay_is_taken_over_by_the_next_retrier(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier, nats_client
) -> None:
    iid, retrier, stub, (letter,) = await dead_pack(platform, sink, start_retrier_on, ["left"])
    md = auth(platform.owner)
    who = await platform.registry.stub.WhoAmI(rpb.WhoAmIRequest(), metadata=md)
    # What a retrier that died right after accepting the replay leaves behind.
    record = ReplayRecord(
        name=f"{platform.workspace}/operations/op_{uuid.uuid4().hex[:20]}",
        instance=platform.instance_name(iid),
        actor=who.member.name,
        letter_ids=[str(LETTER_IDS.read(lid(letter)))],  # as records hold them
        total=1,
        create_time="2026-01-01T00:00:00+00:00",
        updated=time.time() - 3600,
    )
    kv = await nats_client.jetstream().key_value("eventfn_operations")
    await kv.put(record.key(), orjson.dumps(asdict(record)))
    before = len(sink.bodies)
    await start_retrier_on()  # starts, finds the abandoned operation, finishes it
    finished = await done(stub, record.name, md)
    result = pb.ReplayDeadLettersResponse()
    assert finished.response.Unpack(result) and result.replayed == 1
    await settled(sink, before + 1)
    assert delivered(sink, before) == Counter(["left"])
    assert await dead_letters(stub, platform.owner, platform.instance_name(iid)) == []
    assert retrier.port  # the first retrier never knew the operation
