"""A gRPC batch of many bad events: `Ingest` named every bad event, so a 500 KB body of
`[1,1,1,…]` (250,000 of them, a public write key is enough) cost the router 2–3 s of the
event loop every tenant's ingest runs on (an exception, a violation and a status of ≈ 17 MB,
which the client could not even read). A refusal now names the first 100 and stops there."""

from __future__ import annotations

import time

import grpc
import pytest

from eventfn_api.router.v1 import router_pb2 as pb
from eventfn_api.router.v1 import router_pb2_grpc
from tests.registry.conftest import registry
from tests.router.test_service import Env, bad_request, env

__all__ = ["env", "registry"]

BAD = b"[" + b",".join([b"1"] * 250_000) + b"]"


async def test_a_batch_of_many_bad_events_is_refused_cheaply(env: Env) -> None:
    assert len(BAD) <= 500 * 1024
    async with grpc.aio.insecure_channel(f"127.0.0.1:{env.router.grpc_port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        cpu = time.process_time()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Ingest(pb.IngestRequest(write_key=env.write_key, events_json=BAD))
        cpu = time.process_time() - cpu
        stream = stub.IngestStream()
        await stream.write(pb.IngestStreamRequest(write_key=env.write_key, events_json=BAD))
        answer = await stream.read()
        await stream.done_writing()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert details.startswith("at least 100 (the first named) of 250000 events are invalid")
    assert [f for f, _ in bad_request(refused.value)] == [f"events_json[{i}]" for i in range(100)]
    assert isinstance(answer, pb.IngestStreamResponse) and len(answer.event_errors) == 100
    assert cpu < 1.0, f"{cpu:.2f} s of CPU to refuse one batch"
