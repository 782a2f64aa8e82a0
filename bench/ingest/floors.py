"""What the servers cost alone: a gRPC unary call, a stream message and an HTTP request
answered at once, under the same loads as the router's.

The router's CPU per request less its floor is the router's own work; the floors show what
one unary `Ingest` call per batch pays that a batch on `/v1/batch` or in a stream does not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import grpc

from bench.common import Load, grpc_load, http_load, in_child
from eventfn_api.router.v1 import router_pb2 as pb
from eventfn_api.router.v1 import router_pb2_grpc
from services.common import rpc
from services.router.http_server import serve_http


class _Answering(router_pb2_grpc.RouterServicer):
    """Answer every batch at once, with as many messageIds as the router would return."""

    def __init__(self, per_request: int) -> None:
        self._accepted = per_request
        self._ids = [f"floor-{i}" for i in range(per_request)]

    async def Ingest(
        self, request: pb.IngestRequest, context: grpc.aio.ServicerContext
    ) -> pb.IngestResponse:
        return pb.IngestResponse(accepted=self._accepted, message_ids=self._ids)

    async def IngestStream(
        self,
        request_iterator: AsyncIterator[pb.IngestStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.IngestStreamResponse]:
        sequence = 0
        async for _ in request_iterator:
            yield pb.IngestStreamResponse(
                sequence=sequence, accepted=self._accepted, message_ids=self._ids
            )
            sequence += 1


async def _answer_http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the whole body, answer 200 with the router's success body."""
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"success":true}'})


async def start_floors(per_request: int, stack: AsyncExitStack) -> tuple[str, str]:
    """Serve the answering gRPC server (with the platform's gate, as every service) and HTTP
    server; return their addresses (`host:port`, `http://host:port`)."""
    servicer = _Answering(per_request)
    server, grpc_port, _ = rpc.create_server(
        address="127.0.0.1:0",
        register=[lambda s: router_pb2_grpc.add_RouterServicer_to_server(servicer, s)],
        service_names=[pb.DESCRIPTOR.services_by_name["Router"].full_name],
    )
    await server.start()
    stack.push_async_callback(server.stop, 0)
    http, task, http_port = await serve_http(
        _answer_http,
        "127.0.0.1",
        0,
        max_connections=10_000,
        keepalive_seconds=5,
        refuse=_answer_http,
    )

    async def stop_http() -> None:
        http.should_exit = True
        await task

    stack.push_async_callback(stop_http)
    return f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"


def floor_loads(
    pool: Any, grpc_addr: str, http_url: str, per_request: int, seconds: float
) -> list[tuple[str, Callable[[], Awaitable[Load]]]]:
    """The router's unary gRPC, stream and HTTP loads (in that order), aimed at the floors."""
    return [
        (
            "gRPC unary call",
            lambda: in_child(
                pool, grpc_load, grpc_addr, "floor", per_request, 5000, 16, seconds, False
            ),
        ),
        (
            "gRPC stream message",
            lambda: in_child(
                pool, grpc_load, grpc_addr, "floor", per_request, 5000, 4, seconds, True
            ),
        ),
        (
            "HTTP request",
            lambda: in_child(pool, http_load, http_url, "floor", per_request, 5000, 32, seconds),
        ),
    ]
