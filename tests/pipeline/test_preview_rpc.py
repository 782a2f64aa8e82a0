"""Executor.Preview: run unsaved code on a test event and see what it did."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import orjson
import pytest
import typer
from google.protobuf import struct_pb2
from typer.testing import CliRunner

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.cli.preview import preview
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


async def test_the_cli_prints_a_remote_preview_as_a_local_one(
    platform: Platform, sink: Sink, tmp_path: Path
) -> None:
    """`eventfn preview --remote --json` printed the API's message (OUTCOME_DELIVERED,
    resultJson, logs as one string) where a local preview prints {"outcome": "delivered",
    "result": …, "logs": [{level, message}]}: a script could not read both."""
    handler = tmp_path / "fn.js"
    handler.write_text(CODE)
    args = [str(handler), "--set", f"endpoint={sink.url}/x", "--set", "apiKey=k", "--json"]
    env = {
        "EVENTFN_EXECUTOR_ADDR": f"127.0.0.1:{platform.executor.port}",
        "EVENTFN_REGISTRY_ADDR": f"127.0.0.1:{platform.registry.port}",
        "EVENTFN_TOKEN": platform.owner,
        "EVENTFN_EGRESS_ALLOW": "127.0.0.1/32",
    }
    app = typer.Typer()
    app.command()(preview)

    def run(*extra: str) -> dict:
        result = CliRunner().invoke(app, [*args, *extra], env=env)
        assert result.exit_code == 0, result.output
        return orjson.loads(result.output)

    local = await asyncio.to_thread(run, "--allow", "127.0.0.1/32")
    remote = await asyncio.to_thread(run, "--remote")
    assert local.keys() == remote.keys()
    assert (
        local["outcomes"]
        == remote["outcomes"]
        == [
            {
                "kind": "delivered",
                "error_type": None,
                "message": None,
                "stack": None,
                "status": None,
            }
        ]
    )
    for got in (local, remote):
        assert got["outcome"] == "delivered" and got["result"] == {"status": 200}
        assert got["logs"] == [{"level": "log", "message": "sending Song Played with k"}]
        (request,) = got["requests"]
        assert (request["method"], request["url"], request["status"]) == (
            "POST",
            f"{sink.url}/x",
            200,
        )


async def test_a_cli_preview_of_a_function_redacts_its_encrypted_settings(
    platform: Platform, sink: Sink, tmp_path: Path
) -> None:
    """`eventfn preview --remote --function fn_…` sent no setting definitions: the values of
    the function's encrypted settings were printed as they were, in logs and requests."""
    fn = await platform.registry.stub.CreateFunction(
        pb.CreateFunctionRequest(
            parent=platform.workspace,
            function=res.DestinationFunction(display_name="redacted-preview"),
            code=CODE,
            settings=[
                types_pb2.SettingDefinition(
                    name="apiKey", type=types_pb2.SETTING_TYPE_STRING, encrypted=True
                )
            ],
        ),
        metadata=auth(platform.owner),
    )
    handler = tmp_path / "fn.js"
    handler.write_text(CODE)
    env = {
        "EVENTFN_EXECUTOR_ADDR": f"127.0.0.1:{platform.executor.port}",
        "EVENTFN_REGISTRY_ADDR": f"127.0.0.1:{platform.registry.port}",
        "EVENTFN_TOKEN": platform.owner,
    }
    app = typer.Typer()
    app.command()(preview)
    args = [str(handler), "--remote", "--json", "--function", fn.function.name.rsplit("/")[-1]]
    args += ["--set", f"endpoint={sink.url}/x", "--set", "apiKey=sk_test_TOPSECRET"]
    result = await asyncio.to_thread(CliRunner().invoke, app, args, env=env)
    assert result.exit_code == 0, result.output
    got = orjson.loads(result.output)
    assert got["logs"] == [{"level": "log", "message": "sending Song Played with [REDACTED]"}]
    assert "TOPSECRET" not in result.output
