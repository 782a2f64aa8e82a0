"""Google Cloud BigQuery (5.3.0) and winston (2.4.6) as destination functions use them."""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Callable

import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services.runtime import RuntimePool
from tests.runtime.conftest import invoke, value_of
from tests.runtime.fake_apis import FakeApis, Received

TOKEN_HOSTS = ("oauth2.googleapis.com", "www.googleapis.com")
BIGQUERY = "bigquery.googleapis.com"
EMAIL = "writer@eventfn-test.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def service_key() -> rsa.RSAPrivateKey:
    """A service account's RSA key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _token_responder(
    key: rsa.RSAPrivateKey, seen: list[dict[str, object]]
) -> Callable[[Received], web.Response]:
    def respond(request: Received) -> web.Response:
        form = urllib.parse.parse_qs(request.text())
        header, payload, signature = form["assertion"][0].split(".")
        # The SDK signed the JWT with crypto.createSign('RSA-SHA256'): check it really did.
        key.public_key().verify(
            _b64(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        seen.append({"grant_type": form["grant_type"][0], **orjson.loads(_b64(payload))})
        return web.json_response(
            {"access_token": "ya29.tok", "expires_in": 3600, "token_type": "Bearer"}
        )

    return respond


async def test_bigquery_table_insert(
    sdk_pool: RuntimePool, apis: FakeApis, service_key: rsa.RSAPrivateKey
) -> None:
    grants: list[dict[str, object]] = []
    for host in TOKEN_HOSTS:
        apis.on(host, "POST", "/token", _token_responder(service_key, grants))
        apis.on(host, "POST", "/oauth2/v4/token", _token_responder(service_key, grants))
    path = "/bigquery/v2/projects/proj/datasets/events/tables/tracks/insertAll"
    apis.reply(BIGQUERY, "POST", path, {"kind": "bigquery#tableDataInsertAllResponse"})
    pem = service_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    code = """
    async function onTrack(event, settings) {
      const {BigQuery} = google.cloud.bigquery;
      const bigquery = new BigQuery({projectId: 'proj', credentials: {
        client_email: settings.email, private_key: settings.key}});
      await bigquery.dataset('events').table('tracks').insert([
        {event: event.event, user_id: event.userId}]);
      return 'inserted';
    }"""
    event = {"type": "track", "event": "Clicked", "userId": "u3"}
    result = await invoke(
        sdk_pool, code, [event], settings={"email": EMAIL, "key": pem}, timeout_s=10
    )
    assert value_of(result) == "inserted"
    assert len(grants) == 1
    assert grants[0]["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert grants[0]["iss"] == EMAIL
    [insert] = apis.to(BIGQUERY)
    assert (insert.method, insert.path) == ("POST", path + "?prettyPrint=false")
    assert insert.headers["authorization"] == "Bearer ya29.tok"
    rows = insert.json()["rows"]
    assert [r["json"] for r in rows] == [{"event": "Clicked", "user_id": "u3"}]
    assert all(isinstance(r["insertId"], str) for r in rows)


async def test_bigquery_error_is_the_sdks_partial_failure(
    sdk_pool: RuntimePool, apis: FakeApis, service_key: rsa.RSAPrivateKey
) -> None:
    grants: list[dict[str, object]] = []
    for host in TOKEN_HOSTS:
        apis.on(host, "POST", "/token", _token_responder(service_key, grants))
        apis.on(host, "POST", "/oauth2/v4/token", _token_responder(service_key, grants))
    path = "/bigquery/v2/projects/proj/datasets/events/tables/tracks/insertAll"
    failed = {
        "insertErrors": [
            {"index": 0, "errors": [{"reason": "invalid", "message": "no such field"}]}
        ]
    }
    apis.reply(BIGQUERY, "POST", path, failed)
    pem = service_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    code = """
    async function onTrack(event, settings) {
      const bigquery = new google.cloud.bigquery.BigQuery({projectId: 'proj', credentials: {
        client_email: settings.email, private_key: settings.key}});
      try {
        await bigquery.dataset('events').table('tracks').insert([{nope: 1}]);
      } catch (err) {
        return [err.name, err.errors[0].errors[0].message];
      }
    }"""
    result = await invoke(sdk_pool, code, settings={"email": EMAIL, "key": pem}, timeout_s=10)
    assert value_of(result) == ["PartialFailureError", "no such field"]


async def test_winston_logger_writes_to_the_functions_console(pool: RuntimePool) -> None:
    code = """
    async function onTrack(event) {
      const winston = winstonlib.winston;
      const logger = new winston.Logger({transports: [new winston.transports.Console()]});
      logger.info('delivered', {userId: event.userId});
      logger.warn('slow');
      logger.error('failed');
    }"""
    result = await invoke(pool, code, [{"type": "track", "userId": "u1"}])
    assert result.outcomes[0].kind == "delivered"
    assert [(x.level, x.message) for x in result.logs] == [
        ("log", "info: delivered userId=u1"),
        ("log", "warn: slow"),
        ("error", "error: failed"),
    ]


async def test_pubsub_publish_uses_the_http_fallback(
    sdk_pool: RuntimePool, apis: FakeApis, service_key: rsa.RSAPrivateKey
) -> None:
    grants: list[dict[str, object]] = []
    for host in TOKEN_HOSTS:
        apis.on(host, "POST", "/oauth2/v4/token", _token_responder(service_key, grants))
    rpc = "/$rpc/google.pubsub.v1.Publisher/Publish"
    # PublishResponse{message_ids: ["id1"]}, protobuf-encoded (field 1, length-delimited).
    apis.on(
        "pubsub.googleapis.com",
        "POST",
        rpc,
        lambda _r: web.Response(body=b"\x0a\x03id1", content_type="application/x-protobuf"),
    )
    pem = service_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    code = """
    async function onTrack(event, settings) {
      const {PubSub} = google.cloud.pubsub;
      const pubsub = new PubSub({projectId: 'proj', credentials: {
        client_email: settings.email, private_key: settings.key}});
      return await pubsub.topic('events').publish(Buffer.from(JSON.stringify(event)));
    }"""
    event = {"type": "track", "event": "Clicked"}
    result = await invoke(
        sdk_pool, code, [event], settings={"email": EMAIL, "key": pem}, timeout_s=10
    )
    assert value_of(result) == "id1"
    [publish] = apis.to("pubsub.googleapis.com")
    assert (publish.method, publish.path) == ("POST", rpc)
    assert publish.headers["authorization"] == "Bearer ya29.tok"
    assert publish.headers["content-type"] == "application/x-protobuf"
    assert b"projects/proj/topics/events" in publish.body
    assert orjson.dumps(event) in publish.body


async def test_datastore_save_uses_the_http_fallback(
    sdk_pool: RuntimePool, apis: FakeApis, service_key: rsa.RSAPrivateKey
) -> None:
    grants: list[dict[str, object]] = []
    for host in TOKEN_HOSTS:
        apis.on(host, "POST", "/oauth2/v4/token", _token_responder(service_key, grants))
    rpc = "/$rpc/google.datastore.v1.Datastore/Commit"
    apis.on(  # an empty CommitResponse
        "datastore.googleapis.com",
        "POST",
        rpc,
        lambda _r: web.Response(body=b"", content_type="application/x-protobuf"),
    )
    pem = service_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    code = """
    async function onTrack(event, settings) {
      const {Datastore} = google.cloud.datastore;
      const datastore = new Datastore({projectId: 'proj', credentials: {
        client_email: settings.email, private_key: settings.key}});
      await datastore.save({key: datastore.key(['Event', event.messageId]),
                            data: {name: event.event}});
      return 'saved';
    }"""
    event = {"type": "track", "event": "Clicked", "messageId": "msg-1"}
    result = await invoke(
        sdk_pool, code, [event], settings={"email": EMAIL, "key": pem}, timeout_s=10
    )
    assert value_of(result) == "saved"
    [commit] = apis.to("datastore.googleapis.com")
    assert (commit.method, commit.path) == ("POST", rpc)
    assert commit.headers["authorization"] == "Bearer ya29.tok"
    assert b"msg-1" in commit.body and b"Clicked" in commit.body
