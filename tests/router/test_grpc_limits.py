"""The limits on calls waiting for their client's message, as the router's gRPC server applies
them (call_limits.ServerLimits): what they end, and what they leave alone (a server stream such
as WatchConfig, a stream whose client keeps sending, the calls of clients a servicer vouched
for); Health.Watch, which waits on its client for ever, idles out.
Through a real grpc.aio server built by `create_server`, on methods of the test's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pydantic
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import call_limits, rpc
from services.router.settings import RouterSettings

SERVICE = "eventfn.test.v1.Waiting"
IDLE = 0.5  # seconds
LIMIT = 4


async def _echo(requests: AsyncIterator[StringValue], context: Any) -> AsyncIterator[StringValue]:
    async for request in requests:
        if request.value == "known":
            call_limits.vouch()
        yield request


async def _push(request: StringValue, context: Any) -> AsyncIterator[StringValue]:
    """Answer three times, IDLE apart: a server stream outliving the idle limit."""
    for n in range(3):
        yield StringValue(value=f"{request.value} {n}")
        await asyncio.sleep(IDLE)


async def _ok(request: StringValue, context: Any) -> StringValue:
    return request


def _handlers() -> grpc.GenericRpcHandler:
    codec = {
        "request_deserializer": StringValue.FromString,
        "response_serializer": StringValue.SerializeToString,
    }
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.stream_stream_rpc_method_handler(_echo, **codec),
            "Push": grpc.unary_stream_rpc_method_handler(_push, **codec),
            "Ok": grpc.unary_unary_rpc_method_handler(_ok, **codec),
        },
    )


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    """Serve the test methods with small limits; yield a channel to them."""
    server, port, _ = rpc.create_server(
        address="127.0.0.1:0",
        register=[lambda s: s.add_generic_rpc_handlers([_handlers()])],
        service_names=[SERVICE],
        limits=call_limits.ServerLimits(call_idle_seconds=IDLE, max_waiting_calls=LIMIT),
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as open_channel:
            yield open_channel
    finally:
        await server.stop(None)


def _echo_call(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
    return channel.stream_stream(
        f"/{SERVICE}/Echo", StringValue.SerializeToString, StringValue.FromString
    )()


async def _say(call: grpc.aio.StreamStreamCall, value: str) -> None:
    await call.write(StringValue(value=value))
    assert (await call.read()).value == value


async def _ended(call: grpc.aio.StreamStreamCall) -> str:
    """Wait for a call to end; return its status details (UNAVAILABLE)."""
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(call.read(), IDLE + 5)
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    return ended.value.details() or ""


async def test_a_server_stream_outlives_the_idle_limit_once_its_request_came(
    channel: grpc.aio.Channel,
) -> None:
    push = channel.unary_stream(
        f"/{SERVICE}/Push", StringValue.SerializeToString, StringValue.FromString
    )
    got = [m.value async for m in push(StringValue(value="p"))]
    assert got == ["p 0", "p 1", "p 2"]


async def test_a_stream_whose_client_keeps_sending_is_never_ended(
    channel: grpc.aio.Channel,
) -> None:
    call = _echo_call(channel)
    for n in range(6):  # 1.5 idle periods
        await _say(call, str(n))
        await asyncio.sleep(IDLE / 4)
    await call.done_writing()
    assert await call.code() is grpc.StatusCode.OK


async def test_past_the_limit_the_calls_of_unknown_clients_are_ended_first(
    channel: grpc.aio.Channel,
) -> None:
    known = [_echo_call(channel) for _ in range(2)]
    for call in known:
        await _say(call, "known")
    unknown = [_echo_call(channel) for _ in range(2)]
    for call in unknown:
        await _say(call, "hello")
    # The limit is reached: each new call ends the longest-waiting unknown one, although the
    # known ones have waited longer.
    newer = [_echo_call(channel) for _ in range(2)]
    for call in newer:
        await _say(call, "hello")
    for call in unknown:
        assert "waited longest" in await _ended(call)
    for call in known:
        await _say(call, "still here")
    # While calls of unknown clients wait, a further call ends one of them again.
    await _say(_echo_call(channel), "hello")
    assert "waited longest" in await _ended(newer[0])
    for call in known:
        await _say(call, "still here")


async def test_a_unary_call_whose_request_never_comes_is_ended(
    channel: grpc.aio.Channel,
) -> None:
    silent = channel.stream_stream(f"/{SERVICE}/Ok")()
    assert "waits 0.5 s for the client's next message" in await _ended(silent)
    empty = channel.stream_stream(f"/{SERVICE}/Ok")()
    await empty.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await empty.read()
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    ok = channel.unary_unary(
        f"/{SERVICE}/Ok", StringValue.SerializeToString, StringValue.FromString
    )
    assert (await ok(StringValue(value="fine"))).value == "fine"


def test_a_stream_may_not_be_ended_as_idle_while_its_batch_is_stored() -> None:
    with pytest.raises(pydantic.ValidationError, match="must be more than"):
        RouterSettings(router_stream_idle_seconds=5.0, router_publish_timeout_seconds=5.0)


async def _first_health(channel: grpc.aio.Channel) -> tuple[grpc.aio.UnaryStreamCall, Any]:
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    return watch, await watch.read()


async def test_health_watch_answers_and_idles_out_like_a_stream_that_sends_nothing(
    channel: grpc.aio.Channel,
) -> None:
    watch, first = await _first_health(channel)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    # Its client sends nothing more: it is held no longer than a stream that sends nothing.
    async with asyncio.timeout(IDLE * 10):
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await watch.read()
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_watch_answers_on_a_server_without_call_limits() -> None:
    server, port, health = rpc.create_server(
        address="127.0.0.1:0", register=[], service_names=[SERVICE]
    )
    await server.start()
    try:
        await rpc.set_serving(health, [SERVICE])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as open_channel:
            watch, first = await _first_health(open_channel)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
    finally:
        await server.stop(None)
