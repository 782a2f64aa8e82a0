"""The router service end to end: real registry, real NATS, HTTP and gRPC ingestion."""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from google.protobuf import struct_pb2
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventfn_api.registry.v1 import registry_pb2 as rpb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.router.v1 import router_pb2 as pb
from eventfn_api.router.v1 import router_pb2_grpc
from services.common import streams
from services.common.config_watch import ConfigView, apply_message
from services.devtools.embedded import EmbeddedNats
from services.router.app import RunningRouter, start_router
from services.router.settings import RouterSettings
from tests.eventually import eventually
from tests.registry.conftest import HANDLER, SERVICE, SETTINGS, Registry, auth, make_source

# An event nested 1000 levels deep.
DEEP = b'{"userId": "u", "event": "E", "properties": ' + b'{"a": ' * 1000 + b"1" + b"}" * 1001
DROP_SKIPPED = orjson.dumps({"if": 'event = "Skip Me"', "action": "drop"}).decode()


def _settings(**values: Any) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def _free_port() -> int:
    """Return a loopback port nothing listens on (for a registry that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def stored(nc: NatsClient, subject: str) -> list[Msg]:
    """Return every message the EVENTS stream holds on a subject (no waiting for more)."""
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        subject,
        stream=streams.EVENTS_STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, filter_subject=subject
        ),
    )
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        messages: list[Msg] = []
        while len(messages) < pending:
            messages += await sub.fetch(pending - len(messages), timeout=5)
        return messages
    finally:
        await sub.unsubscribe()


def events_of(messages: list[Msg]) -> list[dict[str, Any]]:
    """Flatten the packs' JSON arrays into their events."""
    return [event for m in messages for event in orjson.loads(m.data)]


def basic(write_key: str) -> dict[str, str]:
    """Return the basic-auth header Segment's libraries send."""
    return {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}


@dataclass
class Env:
    """A registry with one source and two instances on it, and a running router."""

    registry: Registry
    router: RunningRouter
    http: httpx.AsyncClient
    owner: str
    workspace_id: str
    source_id: str
    write_key: str
    webhook: str  # instance of function "Webhook", with a filter dropping "Skip Me"
    other: str  # instance of function "Other", no filter

    def subject(self, instance_id: str) -> str:
        """Return the EVENTS subject of an instance."""
        return streams.events_subject(self.workspace_id, instance_id)


async def _instance(r: Registry, owner: str, name: str, source_id: str, *filters: str) -> str:
    parent = (await r.stub.WhoAmI(rpb.WhoAmIRequest(), metadata=auth(owner))).workspace.name
    fn = await r.stub.CreateFunction(
        rpb.CreateFunctionRequest(
            parent=parent,
            function=res.DestinationFunction(display_name=name),
            code=HANDLER,
            settings=SETTINGS,
        ),
        metadata=auth(owner),
    )
    created = await r.stub.CreateInstance(
        rpb.CreateInstanceRequest(
            parent=parent,
            instance=res.Instance(
                function=fn.function.name,
                source=f"{parent}/sources/{source_id}",
                settings=_settings(endpoint="http://127.0.0.1:1/x", apiKey="k"),
                filters=list(filters),
            ),
        ),
        metadata=auth(owner),
    )
    return created.instance.name.rsplit("/", 1)[-1]


def router_settings(nats_url: str, registry_addr: str) -> RouterSettings:
    """Router settings on ephemeral ports."""
    return RouterSettings(
        router_listen="127.0.0.1:0",
        router_http_listen="127.0.0.1:0",
        nats_url=nats_url,
        registry_addr=registry_addr,
        service_token=SERVICE,
        router_publish_timeout_seconds=5.0,
    )


@pytest.fixture
async def env(registry: Registry, nats_url: str) -> AsyncIterator[Env]:
    """Start a router against a registry holding one source with two instances."""
    workspace_id, owner = await registry.workspace("Acme")
    source = await make_source(registry, owner, "web")
    webhook = await _instance(registry, owner, "Webhook", source.id, DROP_SKIPPED)
    other = await _instance(registry, owner, "Other", source.id)
    async with AsyncExitStack() as stack:
        router = await start_router(router_settings(nats_url, f"127.0.0.1:{registry.port}"), stack)
        await router.watcher.wait_until(
            lambda v: len(v.instances_by_source.get(source.id, ())) == 2
        )
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}", timeout=10)
        stack.push_async_callback(http.aclose)
        yield Env(
            registry, router, http, owner, workspace_id, source.id, source.write_key, webhook, other
        )


async def test_track_lands_as_a_pack_for_each_instance(env: Env, nats_client: NatsClient) -> None:
    body = {
        "userId": "u1",
        "event": "Order Completed",
        "properties": {"total": 120},
        "context": {"library": {"name": "analytics-python", "version": "2.3.0"}},
    }
    resp = await env.http.post(
        "/v1/track",
        json=body,
        headers={**basic(env.write_key), "traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"success": True}
    for instance in (env.webhook, env.other):
        messages = await stored(nats_client, env.subject(instance))
        assert len(messages) == 1
        headers = messages[0].headers or {}
        assert headers[streams.MSG_ID].startswith(f"{instance}:")
        assert int(headers[streams.REVISION]) == env.router.watcher.revision
        assert headers[streams.TRACEPARENT].startswith("00-" + "ab" * 16 + "-")
        [event] = events_of(messages)
        assert event["type"] == "track" and event["event"] == "Order Completed"
        assert event["properties"] == {"total": 120}
        assert event["context"]["library"] == {"name": "analytics-python", "version": "2.3.0"}
        assert event["messageId"] and event["receivedAt"] and event["timestamp"]


async def test_batch_with_gzip_and_body_write_key(env: Env, nats_client: NatsClient) -> None:
    batch = {
        "writeKey": env.write_key,
        "batch": [
            {"type": "identify", "userId": "u2", "traits": {"plan": "pro"}, "messageId": "m-1"},
            {"type": "track", "anonymousId": "a2", "event": "Skip Me", "messageId": "m-2"},
            {"type": "page", "userId": "u2", "name": "Home", "messageId": "m-3"},
        ],
    }
    resp = await env.http.post(
        "/v1/batch",
        content=gzip.compress(orjson.dumps(batch)),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert resp.status_code == 200, resp.text
    other = await stored(nats_client, env.subject(env.other))
    assert len(other) == 1, "one request, one instance: one pack"
    assert [e["messageId"] for e in events_of(other)] == ["m-1", "m-2", "m-3"]
    assert all("writeKey" not in e for e in events_of(other))
    webhook = events_of(await stored(nats_client, env.subject(env.webhook)))
    assert [e["messageId"] for e in webhook] == ["m-1", "m-3"], "the filter drops Skip Me"


async def test_integrations_false_drops_for_that_instance_only(
    env: Env, nats_client: NatsClient
) -> None:
    body = {
        "userId": "u3",
        "event": "Signed Up",
        "integrations": {"Webhook (Acme)": False},
    }
    resp = await env.http.post("/v1/track", json=body, headers=basic(env.write_key))
    assert resp.status_code == 200
    assert await stored(nats_client, env.subject(env.webhook)) == []
    assert len(events_of(await stored(nats_client, env.subject(env.other)))) == 1
    off = {"userId": "u3", "event": "Signed Up", "integrations": {"All": False}}
    resp = await env.http.post("/v1/track", json=off, headers=basic(env.write_key))
    assert resp.status_code == 200
    assert len(await stored(nats_client, env.subject(env.other))) == 1


async def test_resend_is_deduplicated(env: Env, nats_client: NatsClient) -> None:
    batch = {
        "batch": [
            {"type": "track", "userId": "u4", "event": "A", "messageId": "dup-1"},
            {"type": "track", "userId": "u4", "event": "B", "messageId": "dup-2"},
        ]
    }
    for _ in range(2):
        resp = await env.http.post("/v1/batch", json=batch, headers=basic(env.write_key))
        assert resp.status_code == 200
    messages = await stored(nats_client, env.subject(env.other))
    assert len(messages) == 1
    assert [e["messageId"] for e in events_of(messages)] == ["dup-1", "dup-2"]


async def test_unknown_missing_and_rotated_write_keys_are_401(
    env: Env, nats_client: NatsClient
) -> None:
    event = {"userId": "u5", "event": "X"}
    resp = await env.http.post("/v1/track", json=event, headers=basic("nope"))
    assert resp.status_code == 401 and resp.json()["success"] is False
    resp = await env.http.post("/v1/track", json=event)
    assert resp.status_code == 401 and "write key" in resp.json()["message"]
    rotated = await env.registry.stub.RotateWriteKey(
        rpb.RotateWriteKeyRequest(name=f"workspaces/{env.workspace_id}/sources/{env.source_id}"),
        metadata=auth(env.owner),
    )
    new_key = rotated.source.write_key
    await env.router.watcher.wait_until(lambda v: new_key in v.sources_by_write_key)
    resp = await env.http.post("/v1/track", json=event, headers=basic(env.write_key))
    assert resp.status_code == 401, "the old key stops working without a restart"
    resp = await env.http.post("/v1/track", json=event, headers=basic(new_key))
    assert resp.status_code == 200
    assert len(await stored(nats_client, env.subject(env.other))) == 1


async def test_unknown_header_key_is_refused_before_the_body_is_read(
    registry: Registry, nats_url: str
) -> None:
    await registry.workspace("Early")
    settings = router_settings(nats_url, f"127.0.0.1:{registry.port}")
    settings.router_http_body_timeout_seconds = 30.0  # far longer than the test waits
    async with AsyncExitStack() as stack:
        router = await start_router(settings, stack)
        await router.watcher.ready.wait()
        reader, writer = await asyncio.open_connection("127.0.0.1", router.http_port)
        stack.callback(writer.close)
        started = time.monotonic()
        # A body that never ends: without the early check the router would wait for it.
        writer.write(
            b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + b"Authorization: Basic "
            + basic("unknown")["Authorization"].split()[1].encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n"
            + b'{"batch": [' * 100
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert time.monotonic() - started < 5
        assert b"connection: close" in answer.lower()
        assert b"unknown write key" in answer
        assert router.ingestor.stats.requests == 0


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "needle"),
    [
        ("/v1/track", b'{"userId": "u", "event": ', {}, 400, "not valid JSON"),
        ("/v1/track", b'{"event": "E"}', {}, 400, "anonymousId"),
        ("/v1/track", b'{"userId": "u", "event": "E", "properties": []}', {}, 400, "properties"),
        ("/v1/batch", b'{"batch": [{"type": "nope", "userId": "u"}]}', {}, 400, "type"),
        ("/v1/track", b'{"userId": "u", "event": "E"}', {"Content-Type": "text/xml"}, 415, "xml"),
        ("/v1/track", DEEP, {}, 400, "deeper"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_stored(
    env: Env,
    nats_client: NatsClient,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    needle: str,
) -> None:
    resp = await env.http.post(
        path,
        content=body,
        headers={"Content-Type": "application/json", **basic(env.write_key), **headers},
    )
    assert resp.status_code == status, resp.text
    assert needle in resp.json()["message"]
    for instance in (env.webhook, env.other):
        assert await stored(nats_client, env.subject(instance)) == []


async def test_one_oversize_event_refuses_the_whole_batch(
    env: Env, nats_client: NatsClient
) -> None:
    batch = {
        "batch": [
            {"type": "track", "userId": "u", "event": "Small"},
            {"type": "track", "userId": "u", "event": "Big", "properties": {"x": "y" * 40_000}},
        ]
    }
    resp = await env.http.post("/v1/batch", json=batch, headers=basic(env.write_key))
    assert resp.status_code == 400
    assert resp.json()["index"] == 1 and "batch[1]" in resp.json()["message"]
    assert await stored(nats_client, env.subject(env.other)) == []


async def test_gzip_bomb_is_refused(env: Env) -> None:
    bomb = gzip.compress(b'{"batch": [' + b" " * 50_000_000 + b"]}")
    resp = await env.http.post(
        "/v1/batch",
        content=bomb,
        headers={"Content-Encoding": "gzip", **basic(env.write_key)},
    )
    assert resp.status_code == 400 and "decompressed" in resp.json()["message"]


async def test_grpc_ingest_and_stream(env: Env, nats_client: NatsClient) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{env.router.grpc_port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        events = [
            {"type": "track", "userId": "g1", "event": "Via gRPC", "messageId": "g-1"},
            {"type": "identify", "userId": "g1"},
        ]
        resp = await stub.Ingest(
            pb.IngestRequest(write_key=env.write_key, events_json=orjson.dumps(events))
        )
        assert resp.accepted == 2 and resp.message_ids[0] == "g-1" and resp.message_ids[1]
        got = events_of(await stored(nats_client, env.subject(env.other)))
        assert [e["messageId"] for e in got] == list(resp.message_ids)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Ingest(pb.IngestRequest(write_key="nope", events_json=b"[]"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Ingest(pb.IngestRequest(write_key=env.write_key, events_json=b"[{"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        async def requests() -> AsyncIterator[pb.IngestStreamRequest]:
            for i in range(3):
                item = [{"type": "track", "userId": "s", "event": "S", "messageId": f"s-{i}"}]
                yield pb.IngestStreamRequest(
                    write_key=env.write_key, events_json=orjson.dumps(item)
                )

        answers = [a async for a in stub.IngestStream(requests())]
        assert [list(a.message_ids) for a in answers] == [["s-0"], ["s-1"], ["s-2"]]
        # Concurrent requests for one instance may share a message (group commit): count events.
        kept = [
            e["messageId"] for e in events_of(await stored(nats_client, env.subject(env.other)))
        ]
        assert kept == [*resp.message_ids, "s-0", "s-1", "s-2"]


async def test_grpc_ingest_continues_the_callers_trace_from_metadata(
    env: Env, nats_client: NatsClient
) -> None:
    trace_id = "5e" * 16
    async with grpc.aio.insecure_channel(f"127.0.0.1:{env.router.grpc_port}") as channel:
        events = [{"type": "track", "userId": "t1", "event": "Traced", "messageId": "tr-1"}]
        await router_pb2_grpc.RouterStub(channel).Ingest(
            pb.IngestRequest(write_key=env.write_key, events_json=orjson.dumps(events)),
            metadata=(("traceparent", f"00-{trace_id}-{'7a' * 8}-01"),),
        )
    [message] = await stored(nats_client, env.subject(env.other))
    assert (message.headers or {})[streams.TRACEPARENT].startswith(f"00-{trace_id}-")


async def test_a_client_sending_one_request_after_another_is_never_held(
    env: Env, nats_url: str, nats_client: NatsClient
) -> None:
    """A coalescing window waits for other senders' requests; the HTTP connection is the
    sender, so one connection's requests, each sent after the last one's answer, go out at
    once even with a long window and a minimum rate any sequence of requests passes."""
    window_ms = 1000.0
    settings = router_settings(nats_url, f"127.0.0.1:{env.registry.port}").model_copy(
        update={"router_coalesce_window_ms": window_ms, "router_coalesce_min_rate": 2.0}
    )
    async with AsyncExitStack() as stack:
        router = await start_router(settings, stack)
        await router.watcher.wait_until(lambda v: env.other in v.instances)
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}", timeout=10)
        stack.push_async_callback(http.aclose)
        for i in range(8):
            started = time.monotonic()
            resp = await http.post(
                "/v1/track",
                json={"userId": "u", "event": "Seq", "messageId": f"seq-{i}"},
                headers=basic(env.write_key),
            )
            assert resp.status_code == 200, resp.text
            assert time.monotonic() - started < window_ms / 2000, f"request {i} was held"
    kept = [e["messageId"] for e in events_of(await stored(nats_client, env.subject(env.other)))]
    assert kept == [f"seq-{i}" for i in range(8)]


async def test_a_request_over_the_connection_limit_gets_the_routers_own_503(
    env: Env, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With all the connections it may serve open, the router answers the next requests with
    its JSON error and Retry-After (not uvicorn's plain text), closes their connections, and
    logs them once with a count (not a line each), through the service's log handlers (uvicorn's
    own printed its lines raw, unescaped, not as JSON)."""
    settings = router_settings(nats_url, f"127.0.0.1:{env.registry.port}").model_copy(
        update={"router_http_max_connections": 2, "router_retry_after_seconds": 7}
    )
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    async with AsyncExitStack() as stack:
        router = await start_router(settings, stack)
        await router.watcher.wait_until(lambda v: env.other in v.instances)
        answers = []
        for _ in range(2):  # kept open: keep-alive
            reader, writer = await asyncio.open_connection("127.0.0.1", router.http_port)
            stack.callback(writer.close)
            writer.write(health)
            answers.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10))
        assert [h.split()[1] for h in answers] == [b"200", b"200"]
        caplog.clear()  # uvicorn's records reach the service's handlers (the root's)
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", router.http_port)
            stack.callback(writer.close)
            writer.write(health)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.split()[1] == b"503"
            fields = dict(
                line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:] if b": " in line
            )
            assert fields[b"retry-after"] == b"7" and fields[b"connection"] == b"close"
            body = orjson.loads(await reader.readexactly(int(fields[b"content-length"])))
            assert body["success"] is False and body["code"] == "unavailable"
            assert "connections" in body["message"]
            assert await reader.read() == b""  # closed
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    refusals = [m for m in logged if "refused with 503" in m]
    assert len(refusals) == 1 and "EVENTFN_ROUTER_HTTP_MAX_CONNECTIONS" in refusals[0], logged
    assert not [m for m in logged if "concurrency limit" in m], logged


async def test_uvicorns_records_go_through_the_services_log_handlers(env: Env) -> None:
    """uvicorn's own logging config printed its lines (a malformed request's, anyone's to
    cause) raw to stderr: not JSON under EVENTFN_LOG_FORMAT=json, a client's text unescaped.
    They reach the root logger's handlers, where the service's formatter is."""
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.router.http_port)
        writer.write(b"\x16\x03\x01 not http\r\n\r\n")
        await asyncio.wait_for(reader.read(), 10)  # answered 400 and closed
        writer.close()
        await eventually(
            lambda: [r for r in seen if r.name.startswith("uvicorn")],
            "uvicorn's warning at the root's handlers",
        )
    finally:
        root.removeHandler(handler)


async def test_new_instance_is_routed_without_restart(env: Env, nats_client: NatsClient) -> None:
    third = await _instance(env.registry, env.owner, "Third", env.source_id)
    await env.router.watcher.wait_until(lambda v: third in v.instances)
    resp = await env.http.post(
        "/v1/track", json={"userId": "u", "event": "Hi"}, headers=basic(env.write_key)
    )
    assert resp.status_code == 200
    assert len(await stored(nats_client, env.subject(third))) == 1


async def test_503_before_the_first_snapshot(nats_url: str) -> None:
    settings = router_settings(nats_url, f"127.0.0.1:{_free_port()}")
    async with AsyncExitStack() as stack:
        router = await start_router(settings, stack)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}") as http:
            resp = await http.post(
                "/v1/t", json={"userId": "u", "event": "E"}, headers={"Origin": "http://a.example"}
            )
            assert resp.status_code == 503
            assert resp.headers["retry-after"] == str(settings.router_retry_after_seconds)
            assert resp.headers["access-control-allow-origin"] == "*"
            assert "retry-after" in resp.headers["access-control-expose-headers"]
            settings_page = await http.get("/v1/projects/k/settings")
            assert settings_page.status_code == 503
            assert (await http.get("/health")).status_code == 503
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await router_pb2_grpc.RouterStub(channel).Ingest(
                    pb.IngestRequest(write_key="k", events_json=b"[]")
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_body_over_the_limit_is_refused(env: Env, nats_client: NatsClient) -> None:
    items = [
        {"type": "track", "userId": "u", "event": "E", "properties": {"x": "y" * 20_000}}
        for _ in range(30)
    ]
    resp = await env.http.post("/v1/batch", json={"batch": items}, headers=basic(env.write_key))
    assert resp.status_code == 400 and "limit" in resp.json()["message"]
    assert await stored(nats_client, env.subject(env.other)) == []


async def test_slow_client_gets_408(registry: Registry, nats_url: str) -> None:
    await registry.workspace("Slow")
    settings = router_settings(nats_url, f"127.0.0.1:{registry.port}")
    settings.router_http_body_timeout_seconds = 0.3
    async with AsyncExitStack() as stack:
        router = await start_router(settings, stack)
        await router.watcher.ready.wait()
        reader, writer = await asyncio.open_connection("127.0.0.1", router.http_port)
        writer.write(
            b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"userId":'
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        writer.close()


async def test_nats_down_answers_503_never_200(registry: Registry, tmp_path: Path) -> None:
    _, owner = await registry.workspace("Down")
    source = await make_source(registry, owner, "s")
    await _instance(registry, owner, "Fn", source.id)
    server = EmbeddedNats(tmp_path / "nats", stop_with_parent=True)
    server.start()
    try:
        settings = router_settings(server.url, f"127.0.0.1:{registry.port}")
        settings.router_publish_timeout_seconds = 1.0
        async with AsyncExitStack() as stack:
            router = await start_router(settings, stack)
            await router.watcher.wait_until(lambda v: source.write_key in v.sources_by_write_key)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{router.http_port}", timeout=10
            ) as http:
                event = {"userId": "u", "event": "E"}
                ok = await http.post("/v1/track", json=event, headers=basic(source.write_key))
                assert ok.status_code == 200
                server.stop()
                down = await http.post("/v1/track", json=event, headers=basic(source.write_key))
                assert down.status_code == 503, down.text
                assert "retry-after" in down.headers
    finally:
        server.stop()


def test_config_deltas_replace_and_remove() -> None:
    snapshot = rpb.WatchConfigResponse(
        revision=1,
        reset=True,
        sources=[
            rpb.SourceConfig(id="s1", write_key="k1"),
            rpb.SourceConfig(id="s2", write_key="k2"),
        ],
        instances=[
            rpb.InstanceConfig(id="i1", source_id="s1"),
            rpb.InstanceConfig(id="i2", source_id="s1"),
        ],
    )
    view = apply_message(ConfigView(), snapshot)
    assert set(view.sources_by_write_key) == {"k1", "k2"}
    assert [i.id for i in view.instances_by_source["s1"]] == ["i1", "i2"]
    delta = rpb.WatchConfigResponse(
        revision=2,
        sources=[rpb.SourceConfig(id="s1", write_key="k1-rotated")],
        removed_source_ids=["s2"],
        removed_instance_ids=["i1"],
    )
    after = apply_message(view, delta)
    assert set(after.sources_by_write_key) == {"k1-rotated"}
    assert [i.id for i in after.instances_by_source["s1"]] == ["i2"]
    assert view.revision == 1 and "k1" in view.sources_by_write_key, "old views are untouched"
    again = apply_message(after, rpb.WatchConfigResponse(revision=3, reset=True))
    assert again.revision == 3 and not again.sources and not again.instances


async def test_grpc_stream_answers_in_order_and_goes_on_after_a_refused_batch(
    env: Env, nats_client: NatsClient
) -> None:
    def batch(i: int, key: str) -> pb.IngestStreamRequest:
        item = [{"type": "track", "userId": "s", "event": "S", "messageId": f"o-{i}"}]
        return pb.IngestStreamRequest(write_key=key, events_json=orjson.dumps(item))

    async def many() -> AsyncIterator[pb.IngestStreamRequest]:
        for i in range(100):
            yield batch(i, env.write_key)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{env.router.grpc_port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        answers = [list(a.message_ids) async for a in stub.IngestStream(many())]
        assert answers == [[f"o-{i}"] for i in range(100)]
        got_ids = [
            e["messageId"] for e in events_of(await stored(nats_client, env.subject(env.other)))
        ]
        assert sorted(got_ids) == sorted(f"o-{i}" for i in range(100))

        bad_events = [
            {"type": "track", "userId": "s", "event": "S", "messageId": "o-bad-0"},
            {"type": "identify", "traits": {}},
            "not an event",
            {"type": "shout", "userId": "s"},
        ]

        async def mixed() -> AsyncIterator[pb.IngestStreamRequest]:
            yield batch(100, env.write_key)
            yield batch(101, "wrong")
            yield pb.IngestStreamRequest(write_key=env.write_key, events_json=b"[{")
            yield pb.IngestStreamRequest(
                write_key=env.write_key, events_json=orjson.dumps(bad_events)
            )
            yield pb.IngestStreamRequest(write_key="", events_json=b"[]")
            yield batch(102, env.write_key)

        # Refused batches are answered with their errors; the stream goes on.
        answers = [a async for a in stub.IngestStream(mixed())]
        assert [a.sequence for a in answers] == [0, 1, 2, 3, 4, 5]
        assert [list(a.message_ids) for a in answers] == [["o-100"], [], [], [], [], ["o-102"]]
        assert [a.error.code for a in answers] == [0, 16, 3, 3, 3, 0]  # OK, UNAUTH, INVALID
        assert "unknown write key" in answers[1].error.message
        assert "events_json is not valid JSON" in answers[2].error.message
        assert [(e.index, e.field) for e in answers[3].event_errors] == [
            (1, "userId"),
            (2, ""),
            (3, "type"),
        ]
        assert "3 of 4 events are invalid" in answers[3].error.message
        assert "write_key" in answers[4].error.message
        stored_ids = [
            e["messageId"] for e in events_of(await stored(nats_client, env.subject(env.other)))
        ]
        assert "o-bad-0" not in stored_ids, "nothing of a refused batch is stored"
        assert {"o-100", "o-102"} <= set(stored_ids)


async def test_grpc_ingest_names_every_bad_event_and_stores_nothing(
    env: Env, nats_client: NatsClient
) -> None:
    before = len(await stored(nats_client, env.subject(env.other)))
    events = [
        {"type": "track", "userId": "u", "event": "Fine"},
        {"type": "track", "event": "Nobody"},
        {"type": "group", "userId": "u"},
        [1, 2],
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{env.router.grpc_port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Ingest(
                pb.IngestRequest(write_key=env.write_key, events_json=orjson.dumps(events))
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "3 of 4 events are invalid, nothing was stored" in (info.value.details() or "")
        assert [f for f, _ in bad_request(info.value)] == [
            "events_json[1].userId",
            "events_json[2].groupId",
            "events_json[3]",
        ]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Ingest(pb.IngestRequest(events_json=b"[]"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in bad_request(info.value)] == ["write_key"]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Ingest(pb.IngestRequest(write_key=env.write_key, events_json=b"x" * 600_000))
        assert "events_json is larger than" in (info.value.details() or "")
        assert "body" not in (info.value.details() or "")
    assert len(await stored(nats_client, env.subject(env.other))) == before


def bad_request(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    out = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [(v.field, v.description) for v in bad.field_violations]
    return out
