"""The tracking API as Segment's browser library uses it: short paths, text/plain bodies,
CORS, the settings endpoint, and a header write key checked before the body is read."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import httpx
import orjson
import pytest
from nats.aio.client import Client as NatsClient

from eventfn_api.registry.v1 import registry_pb2 as rpb
from services.router.app import start_router
from tests.registry.conftest import Registry, auth, make_source
from tests.router.test_service import Env, basic, env, events_of, router_settings, stored

__all__ = ["env"]

ORIGIN = "http://127.0.0.1:5555"
TEXT = {"Content-Type": "text/plain", "Origin": ORIGIN}


@pytest.mark.parametrize(
    ("path", "kind", "event"),
    [
        ("/v1/t", "track", {"event": "Clicked"}),
        ("/v1/p", "page", {"name": "Home"}),
        ("/v1/i", "identify", {"traits": {"plan": "pro"}}),
        ("/v1/g", "group", {"groupId": "g1"}),
        ("/v1/a", "alias", {"previousId": "anon-1"}),
        ("/v1/s", "screen", {"name": "Settings"}),
    ],
)
async def test_short_paths_take_text_plain_with_the_body_write_key(
    env: Env, nats_client: NatsClient, path: str, kind: str, event: dict[str, Any]
) -> None:
    body = {"userId": "u1", "writeKey": env.write_key, "messageId": f"{kind}-1", **event}
    resp = await env.http.post(path, content=orjson.dumps(body), headers=TEXT)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"success": True}
    assert resp.headers["access-control-allow-origin"] == "*"
    [stored_event] = events_of(await stored(nats_client, env.subject(env.other)))
    assert stored_event["type"] == kind and stored_event["messageId"] == f"{kind}-1"
    assert "writeKey" not in stored_event
    for name, value in event.items():
        assert stored_event[name] == value


async def test_short_batch_path_takes_what_analytics_next_sends(
    env: Env, nats_client: NatsClient
) -> None:
    # analytics-next with batching: the key in the body, in every event and in the header.
    batch = {
        "writeKey": env.write_key,
        "sentAt": "2026-01-01T00:00:01.000Z",
        "batch": [
            {
                "type": "page",
                "anonymousId": "a1",
                "writeKey": env.write_key,
                "messageId": "b-1",
                "timestamp": "2026-01-01T00:00:00.000Z",
                "context": {"library": {"name": "analytics.js", "version": "next-1.84.3"}},
            },
            {"type": "track", "anonymousId": "a1", "event": "Skip Me", "messageId": "b-2"},
        ],
    }
    resp = await env.http.post(
        "/v1/b",
        content=orjson.dumps(batch),
        headers={**TEXT, **basic(env.write_key), "X-Retry-Count": "0"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["access-control-allow-origin"] == "*"
    other = events_of(await stored(nats_client, env.subject(env.other)))
    assert [e["messageId"] for e in other] == ["b-1", "b-2"]
    assert other[0]["context"]["library"]["name"] == "analytics.js"
    assert other[0]["originalTimestamp"] == "2026-01-01T00:00:00.000Z"
    webhook = events_of(await stored(nats_client, env.subject(env.webhook)))
    assert [e["messageId"] for e in webhook] == ["b-1"], "filters apply as on /v1/batch"


async def test_text_plain_that_is_not_json_is_a_400(env: Env, nats_client: NatsClient) -> None:
    resp = await env.http.post("/v1/t", content=b"userId=u1&event=E", headers=TEXT)
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["message"]
    assert resp.headers["access-control-allow-origin"] == "*"
    assert await stored(nats_client, env.subject(env.other)) == []


@pytest.mark.parametrize(
    "path", ["/v1/t", "/v1/b", "/v1/track", "/v1/batch", "/v1/projects/any/settings"]
)
async def test_preflight_is_answered_with_204(env: Env, path: str) -> None:
    resp = await env.http.options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-retry-count",
        },
    )
    assert resp.status_code == 204, resp.text
    assert resp.content == b""
    assert resp.headers["access-control-allow-origin"] == "*"
    assert "POST" in resp.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in resp.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-retry-count"} <= allowed
    assert int(resp.headers["access-control-max-age"]) > 0


async def test_every_error_carries_cors_headers(env: Env) -> None:
    track = orjson.dumps({"userId": "u", "event": "E"})
    answers = {
        400: await env.http.post("/v1/t", content=b"{", headers={**TEXT, **basic(env.write_key)}),
        401: await env.http.post("/v1/t", content=track, headers={**TEXT, **basic("nope")}),
        404: await env.http.post("/v1/nothing", content=track, headers=TEXT),
        405: await env.http.get("/v1/t", headers={"Origin": ORIGIN}),
        415: await env.http.post(
            "/v1/t", content=track, headers={"Content-Type": "text/xml", "Origin": ORIGIN}
        ),
    }
    for status, resp in answers.items():
        assert resp.status_code == status, resp.text
        assert resp.headers["access-control-allow-origin"] == "*", status
        assert resp.json()["success"] is False
    assert answers[405].headers["allow"] == "POST, OPTIONS"


async def test_settings_for_a_known_write_key(env: Env) -> None:
    resp = await env.http.get(f"/v1/projects/{env.write_key}/settings", headers={"Origin": ORIGIN})
    assert resp.status_code == 200, resp.text
    assert resp.headers["access-control-allow-origin"] == "*"
    assert resp.headers["content-type"] == "application/json"
    assert "max-age" in resp.headers["cache-control"]
    # Cached for one Host and scheme, it must not answer another.
    assert resp.headers["vary"] == "Host, X-Forwarded-Proto"
    document = resp.json()
    assert list(document["integrations"]) == ["Segment.io"], "any other would load Segment code"
    segment = document["integrations"]["Segment.io"]
    assert segment["apiKey"] == env.write_key
    # Where the library posts: this router, as the request reached it.
    assert segment["protocol"] == "http"
    assert segment["apiHost"] == f"127.0.0.1:{env.router.http_port}/v1"
    assert document["metrics"]["sampleRate"] == 0


async def test_settings_for_an_unknown_write_key_is_a_404(env: Env) -> None:
    resp = await env.http.get("/v1/projects/wk_nope/settings", headers={"Origin": ORIGIN})
    assert resp.status_code == 404
    assert resp.headers["access-control-allow-origin"] == "*"
    body = resp.json()
    assert body["success"] is False and body["code"] == "not_found"
    assert "write key" in body["message"] and "eventfn sources list" in body["message"]
    post = await env.http.post(f"/v1/projects/{env.write_key}/settings")
    assert post.status_code == 405 and post.headers["allow"] == "GET, OPTIONS"


async def test_settings_follow_a_rotated_write_key(env: Env) -> None:
    rotated = await env.registry.stub.RotateWriteKey(
        rpb.RotateWriteKeyRequest(name=f"workspaces/{env.workspace_id}/sources/{env.source_id}"),
        metadata=auth(env.owner),
    )
    new_key = rotated.source.write_key
    await env.router.watcher.wait_until(lambda v: new_key in v.sources_by_write_key)
    assert (await env.http.get(f"/v1/projects/{env.write_key}/settings")).status_code == 404
    resp = await env.http.get(f"/v1/projects/{new_key}/settings")
    assert resp.json()["integrations"]["Segment.io"]["apiKey"] == new_key


async def test_listed_cors_origins_only(registry: Registry, nats_url: str) -> None:
    _, owner = await registry.workspace("Listed")
    source = await make_source(registry, owner, "s")
    settings = router_settings(nats_url, f"127.0.0.1:{registry.port}")
    settings.router_cors_origins = f"{ORIGIN}, https://shop.example.com"
    settings.router_public_url = "https://track.example.com"
    async with AsyncExitStack() as stack:
        router = await start_router(settings, stack)
        await router.watcher.wait_until(lambda v: source.write_key in v.sources_by_write_key)
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}", timeout=10)
        stack.push_async_callback(http.aclose)
        event = orjson.dumps({"userId": "u", "event": "E", "writeKey": source.write_key})

        listed = await http.post("/v1/t", content=event, headers=TEXT)
        assert listed.status_code == 200, listed.text
        assert listed.headers["access-control-allow-origin"] == ORIGIN
        assert listed.headers["vary"] == "Origin"

        evil = {"Content-Type": "text/plain", "Origin": "https://evil.example"}
        refused = await http.post("/v1/t", content=event, headers=evil)
        assert refused.status_code == 403 and "EVENTFN_ROUTER_CORS_ORIGINS" in refused.text
        assert "access-control-allow-origin" not in refused.headers
        preflight = await http.options(
            "/v1/t", headers={**evil, "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 403

        server = await http.post("/v1/t", content=event)  # no Origin: not a browser
        assert server.status_code == 200

        resp = await http.get(f"/v1/projects/{source.write_key}/settings", headers=TEXT)
        segment = resp.json()["integrations"]["Segment.io"]
        assert (segment["protocol"], segment["apiHost"]) == ("https", "track.example.com/v1")
        assert "Host" not in resp.headers.get("vary", ""), "the same for every Host"
