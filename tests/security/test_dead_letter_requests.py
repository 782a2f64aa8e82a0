"""What a dead-letter call may ask of the shared retrier: bounded work, and a clear refusal of
what cannot be. Replay and Purge looked every named letter up in DEAD before answering, however
many were named (four calls naming 20,000 letters that do not exist held the retrier for
6 s, another workspace's GetDeadLetter 146 ms instead of 7); a sequence past 64 bits, an
instance id with a dot and a time past the year 9999 were INTERNAL errors (logged), and a
name of megabytes was quoted back past gRPC's metadata limit (RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2

from eventfn_api.retrier.v1 import retrier_pb2
from tests.registry.conftest import auth, registry
from tests.retrier.conftest import start_retrier_on
from tests.security.test_control_plane_dead_letters import World, world

__all__ = ["registry", "start_retrier_on", "world"]

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def refusal(call: Any) -> tuple[grpc.StatusCode, str]:
    """Await a call that must fail; return its status code and details."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


@pytest.mark.parametrize("rpc", ["ReplayDeadLetters", "PurgeDeadLetters"])
async def test_a_call_naming_more_letters_than_a_page_is_refused_before_any_lookup(
    world: World, rpc: str
) -> None:
    _, attacker, stub, _ = world
    names = [attacker.letter_name(str(10_000_000 + i)) for i in range(20_000)]
    request = getattr(retrier_pb2, f"{rpc}Request")(parent=attacker.instance, names=names)
    started = time.perf_counter()
    code, details = await refusal(getattr(stub, rpc)(request, metadata=auth(attacker.owner)))
    took = time.perf_counter() - started
    assert code == INVALID and "at most 500 dead letters per call" in details, (code, details)
    assert took < 1.0, f"{took:.1f} s: the letters were looked up"


@pytest.mark.parametrize("letter", ["18446744073709551621", "a" * 26, "a" * 26 + ".-1"])
@pytest.mark.parametrize("rpc", ["GetDeadLetter", "ReplayDeadLetters", "PurgeDeadLetters"])
async def test_an_id_the_retrier_did_not_give_is_refused_naming_the_field(
    world: World, rpc: str, letter: str
) -> None:
    _, attacker, stub, _ = world
    name = f"{attacker.instance}/deadLetters/{letter}"
    if rpc == "GetDeadLetter":
        request: Any = retrier_pb2.GetDeadLetterRequest(name=name)
    else:
        request = getattr(retrier_pb2, f"{rpc}Request")(parent=attacker.instance, names=[name])
    code, details = await refusal(getattr(stub, rpc)(request, metadata=auth(attacker.owner)))
    assert code == INVALID and "name" in details and "dead letter id" in details, details


@pytest.mark.parametrize("rpc", ["ReplayDeadLetters", "PurgeDeadLetters"])
async def test_an_instance_id_with_a_dot_is_not_found(world: World, rpc: str) -> None:
    _, attacker, stub, _ = world
    request = getattr(retrier_pb2, f"{rpc}Request")(
        parent=f"workspaces/{attacker.workspace_id}/instances/a.b"
    )
    code, details = await refusal(getattr(stub, rpc)(request, metadata=auth(attacker.owner)))
    assert code == grpc.StatusCode.NOT_FOUND, (code, details)


@pytest.mark.parametrize("rpc", ["ListDeadLetters", "ReplayDeadLetters", "PurgeDeadLetters"])
async def test_a_time_past_the_year_9999_is_invalid_naming_the_field(
    world: World, rpc: str
) -> None:
    _, attacker, stub, _ = world
    request = getattr(retrier_pb2, f"{rpc}Request")(
        parent=attacker.instance, end_time={"seconds": 10**12}
    )
    code, details = await refusal(getattr(stub, rpc)(request, metadata=auth(attacker.owner)))
    assert code == INVALID and "end_time" in details, (code, details)


async def test_a_name_of_megabytes_is_refused_without_being_quoted(world: World) -> None:
    _, attacker, stub, _ = world
    name = f"{attacker.instance}/deadLetters/{'7' * 3_000_000}"
    code, details = await refusal(
        stub.GetDeadLetter(
            retrier_pb2.GetDeadLetterRequest(name=name), metadata=auth(attacker.owner)
        )
    )
    assert code == INVALID and "longer than 1000 characters" in details, (code, details[:200])


async def test_a_retry_after_its_operation_was_deleted_does_not_replay_again(
    world: World,
) -> None:
    # The request_id still named the deleted operation, which read as none: the retry started
    # a second replay.
    _, attacker, stub, _ = world
    md = auth(attacker.owner)
    request = retrier_pb2.ReplayDeadLettersRequest(
        parent=attacker.instance, request_id=str(uuid.uuid4())
    )
    started = await stub.ReplayDeadLetters(request, metadata=md)
    await stub.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=started.name), metadata=md
    )
    await stub.operations.DeleteOperation(
        operations_pb2.DeleteOperationRequest(name=started.name), metadata=md
    )
    code, details = await refusal(stub.ReplayDeadLetters(request, metadata=md))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "new request_id" in details, details
