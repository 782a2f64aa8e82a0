"""Executor.Preview: run unsaved code on a test event and see what it did."""

from __future__ import annotations

import grpc
import orjson
import pytest
from google.protobuf import struct_pb2

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from eventfn_api.type.v1 import types_pb2
from tests.pipeline.conftest import Platform, Sink
from tests.registry.conftest import auth

CODE = """
async function onTrack(event, settings) {
  console.log('sending', event.event, 'with', settings.apiKey)
  const res = await fetch(settings.endpoint, {method: 'POST', body: JSON.stringify(event),
    headers: {Authorization: 'Bearer ' + settings.apiKey}})
  return {status: res.status}
}
"""


async def test_preview_reports_result_logs_and_requests(platform: Platform, sink: Sink) -> None:
    settings = struct_pb2.Struct()
    settings.update({"endpoint": sink.url + "/x", "apiKey": "sk_test_TOPSECRET"})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        stub = executor_pb2_grpc.ExecutorStub(channel)
        resp = await stub.Preview(
            executor_pb2.PreviewRequest(
                code=CODE,
                event_json=orjson.dumps({"type": "track", "event": "Clicked"}).decode(),
                settings=settings,
                setting_definitions=[
                    types_pb2.SettingDefinition(
                        name="apiKey", type=types_pb2.SETTING_TYPE_STRING, encrypted=True
                    ),
                    types_pb2.SettingDefinition(
                        name="endpoint", type=types_pb2.SETTING_TYPE_STRING
                    ),
                ],
            ),
            metadata=auth(platform.owner),
        )
        assert resp.outcome == types_pb2.OUTCOME_DELIVERED
        assert orjson.loads(resp.result_json) == {"status": 200}
        assert "sending Clicked" in resp.logs and "TOPSECRET" not in resp.logs
        (req,) = resp.requests
        assert req.method == "POST" and req.status == 200
        assert "TOPSECRET" not in str(resp)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Preview(
                executor_pb2.PreviewRequest(code="function onTrack( {", event_json="{}"),
                metadata=auth(platform.owner),
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "line 1" in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Preview(executor_pb2.PreviewRequest(code=CODE, event_json="{}"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
