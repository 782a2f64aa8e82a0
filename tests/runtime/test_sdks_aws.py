"""AWS SDK (aws-sdk 2.488.0, global `AWS`): S3 and SQS as destination functions call them."""

from __future__ import annotations

import hashlib
import re
import urllib.parse

from aiohttp import web

from services.runtime import RuntimePool
from tests.runtime.conftest import invoke, value_of
from tests.runtime.fake_apis import FakeApis, Received

CREDENTIALS = {"key": "AKIDTEST", "secret": "s3cr3t"}
BUCKET_HOST = "eventfn-bucket.s3.amazonaws.com"
SQS_HOST = "sqs.us-east-1.amazonaws.com"


def sigv4(service: str) -> re.Pattern[str]:
    """Return the shape of a SigV4 Authorization header for `service` in us-east-1."""
    return re.compile(
        rf"^AWS4-HMAC-SHA256 Credential=AKIDTEST/\d{{8}}/us-east-1/{service}/aws4_request, "
        r"SignedHeaders=[a-z0-9;-]*host[a-z0-9;-]*, Signature=[0-9a-f]{64}$"
    )


async def test_s3_put_object_is_signed_and_sent(sdk_pool: RuntimePool, apis: FakeApis) -> None:
    apis.on(
        BUCKET_HOST, "PUT", "/events/e1.json", lambda _r: web.Response(headers={"ETag": '"abc"'})
    )
    code = """
    async function onTrack(event, settings) {
      const s3 = new AWS.S3({accessKeyId: settings.key, secretAccessKey: settings.secret,
                             region: 'us-east-1'});
      const out = await s3.putObject({Bucket: 'eventfn-bucket', Key: 'events/e1.json',
        Body: JSON.stringify(event), ContentType: 'application/json'}).promise();
      return out.ETag;
    }"""
    event = {"type": "track", "event": "Signed Up"}
    result = await invoke(sdk_pool, code, [event], settings=CREDENTIALS)
    assert value_of(result) == '"abc"'
    [got] = apis.to(BUCKET_HOST)
    assert (got.method, got.path) == ("PUT", "/events/e1.json")
    assert got.json() == event
    assert sigv4("s3").match(got.headers["authorization"])
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"  # S3 over HTTPS
    assert [t.url for t in result.requests] == [f"https://{BUCKET_HOST}/events/e1.json"]


def _sqs_reply(request: Received) -> web.Response:
    form = urllib.parse.parse_qs(request.text())
    md5 = hashlib.md5(form["MessageBody"][0].encode()).hexdigest()
    xml = (
        "<SendMessageResponse><SendMessageResult>"
        f"<MD5OfMessageBody>{md5}</MD5OfMessageBody><MessageId>m-42</MessageId>"
        "</SendMessageResult><ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata>"
        "</SendMessageResponse>"
    )
    return web.Response(text=xml, content_type="text/xml")


async def test_sqs_send_message_is_signed_and_sent(sdk_pool: RuntimePool, apis: FakeApis) -> None:
    apis.on(SQS_HOST, "POST", "/", _sqs_reply)
    code = """
    async function onTrack(event, settings) {
      const sqs = new AWS.SQS({accessKeyId: settings.key, secretAccessKey: settings.secret,
                               region: 'us-east-1'});
      const out = await sqs.sendMessage({
        QueueUrl: 'https://sqs.us-east-1.amazonaws.com/123456789012/events',
        MessageBody: JSON.stringify({id: event.messageId}),
      }).promise();
      return out.MessageId;
    }"""
    result = await invoke(
        sdk_pool, code, [{"type": "track", "messageId": "e-7"}], settings=CREDENTIALS
    )
    assert value_of(result) == "m-42"
    [got] = apis.to(SQS_HOST)
    assert (got.method, got.path) == ("POST", "/")
    form = urllib.parse.parse_qs(got.text())
    assert form["Action"] == ["SendMessage"]
    assert form["QueueUrl"] == ["https://sqs.us-east-1.amazonaws.com/123456789012/events"]
    assert form["MessageBody"] == ['{"id":"e-7"}']
    assert sigv4("sqs").match(got.headers["authorization"])


async def test_s3_error_is_the_sdks_error_and_retry_error_retries(
    sdk_pool: RuntimePool, apis: FakeApis
) -> None:
    xml = "<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
    apis.on(
        BUCKET_HOST,
        "PUT",
        "/k",
        lambda _r: web.Response(status=503, text=xml, content_type="application/xml"),
    )
    code = """
    async function onTrack(event, settings) {
      const s3 = new AWS.S3({accessKeyId: settings.key, secretAccessKey: settings.secret,
                             region: 'us-east-1', maxRetries: 0});
      try {
        await s3.putObject({Bucket: 'eventfn-bucket', Key: 'k', Body: 'x'}).promise();
      } catch (err) {
        if (err.code === 'SlowDown' && err.statusCode === 503 && err.retryable) {
          throw new RetryError(`S3 said ${err.code}: ${err.message}`);
        }
        throw err;
      }
    }"""
    result = await invoke(sdk_pool, code, settings=CREDENTIALS)
    outcome = result.outcomes[0]
    assert (outcome.kind, outcome.error_type) == ("retry", "RetryError")
    assert outcome.message == "S3 said SlowDown: Reduce your request rate."
