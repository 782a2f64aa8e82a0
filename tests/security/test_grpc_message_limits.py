"""What a gRPC request may make a service do before its caller is known. The router took
messages of 16 MiB, compressed: 16 KB of gzip on the wire inflated to 16 MiB (146 ms of CPU
and the memory, before the write key was looked at), so ≈ 10 Mbit/s without credentials
stopped gRPC ingestion for everyone. And every service walked each request's strings for
control characters before authorizing it: 8 million empty values (16 MB) held the registry's
loop 8 s, for a caller without a token. The router takes 1,000 KB now (a batch's 500 KB
twice), the retrier 4 MiB, the executor 8 MiB; a request with more than MAX_VALUES values is
refused, walked no further, and a large one is walked in a thread, the loop serving others."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from eventfn_api.registry.v1 import registry_pb2 as rpb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.router.v1 import router_pb2 as pb
from eventfn_api.router.v1 import router_pb2_grpc
from services.common.request_text import MAX_VALUES, control_character_violations
from tests.pipeline.conftest import Platform, platform
from tests.registry.conftest import Registry, registry

__all__ = ["platform", "registry"]


async def test_a_compressed_request_inflates_no_further_than_a_batch(platform: Platform) -> None:
    bomb = pb.IngestRequest(write_key="nope", events_json=b" " * (4 * 1024 * 1024))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.router.grpc_port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Ingest(bomb, compression=grpc.Compression.Gzip)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A batch at the router's own limit still comes in (and is refused for its key).
        batch = pb.IngestRequest(write_key="nope", events_json=b"[" + b" " * 500_000 + b"]")
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.Ingest(batch, compression=grpc.Compression.Gzip)
        assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_request_of_countless_values_is_refused_before_it_is_walked(
    registry: Registry,
) -> None:
    settings = struct_pb2.Struct()
    values = settings.fields["a"].list_value.values
    for _ in range(MAX_VALUES + 1):
        values.add()
    request = rpb.CreateInstanceRequest(instance=res.Instance(settings=settings))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await registry.stub.CreateInstance(request)  # no token at all
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"more than {MAX_VALUES}" in (refused.value.details() or "")


def test_an_instances_largest_settings_are_walked() -> None:
    # 30,000 ZIP codes in one setting (240 KB, under an instance's 256 KB) were refused by a
    # budget of 50,000 values.
    settings = struct_pb2.Struct()
    settings.update({"allowedZips": [f"{i:05d}" for i in range(30_000)]})
    request = rpb.CreateInstanceRequest(instance=res.Instance(settings=settings))
    assert control_character_violations(request) == []
