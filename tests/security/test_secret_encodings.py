"""An encrypted setting stays out of what the platform keeps in any spelling a function gives
it: URL-encoded in a fetch URL, base64 in a Basic Authorization header, JSON-escaped in a log
line, inside an error's message (a member with read-only access reads deliveries)."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import grpc
from nats.aio.client import Client as NatsClient

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common import streams
from services.runtime import RuntimePool
from tests.eventually import eventually
from tests.pipeline.conftest import Platform, Sink, platform, sink
from tests.pipeline.test_delivery import batch_body, send
from tests.registry.conftest import auth, registry
from tests.runtime.conftest import invoke, pool

__all__ = ["platform", "pool", "registry", "sink"]

SECRET = 'sk/live+SECRET"9'  # as reported: every character class an encoder rewrites
SECRETS = [SECRET, 'tok en\\"é/ünï+=?&%', "plain_alnum_key_0123456789"]
URI_COMPONENT_SAFE = "-_.!~*'()"  # what encodeURIComponent leaves as it is

# btoa takes Latin-1 only: other keys go through Buffer, as UTF-8.
LEAKY = r"""
const b64 = s => /^[\x00-\xff]*$/.test(s) ? btoa(s) : Buffer.from(s).toString('base64')
async function onTrack(event, settings) {
  const key = settings.apiKey
  const url = settings.endpoint + '/fail?key=' + encodeURIComponent(key)
  console.log(JSON.stringify({key}), encodeURI(key), new URLSearchParams({key}).toString())
  const res = await fetch(url, {
    method: 'POST',
    headers: {Authorization: 'Basic ' + b64('u:' + key),
              'X-Key': b64(key).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')},
    body: JSON.stringify({key, auth: b64('user:' + key)}),
  })
  if (res.status >= 500) throw new RetryError('HTTP ' + res.status + ' from ' + url)
}
async function onIdentify(event, settings) {
  return {key: settings.apiKey, escaped: JSON.stringify(settings.apiKey)}
}
"""


def spellings(secret: str) -> list[str]:
    """Return the secret as the encoders a function can reach write it (base64: the characters
    that depend on the secret alone, for each of the three offsets it can start at)."""
    out = [
        secret,
        quote(secret, safe=""),
        quote(secret, safe=URI_COMPONENT_SAFE),
        quote(secret, safe=URI_COMPONENT_SAFE + ";,/?:@&=+$#"),  # encodeURI
        quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    ]
    codecs = ["utf-8"] + (["latin-1"] if max(map(ord, secret)) < 256 else [])
    for codec in codecs:
        data = secret.encode(codec)
        for offset in range(3):
            full = base64.b64encode(bytes(offset) + data).decode()
            inner = full[-(-8 * offset // 6) : 8 * (offset + len(data)) // 6]
            out += [inner, inner.replace("+", "-").replace("/", "_")]
    return sorted(set(out))


def assert_kept_nothing(secret: str, kept: str) -> None:
    for spelling in spellings(secret):
        assert spelling not in kept, f"{spelling!r} (a spelling of {secret!r}) in {kept!r}"


async def test_deliveries_show_no_spelling_of_an_encrypted_setting(
    platform: Platform, sink: Sink, nats_client: NatsClient
) -> None:
    sink.status = 500
    owner = auth(platform.owner)
    stub = platform.registry.stub
    iid = await platform.instance(LEAKY, sink.url, secret=SECRET)
    function = (
        await stub.GetInstance(
            pb.GetInstanceRequest(name=platform.instance_name(iid)), metadata=owner
        )
    ).instance.function
    reader = await platform.registry.member(
        platform.owner,
        "reader@leaky.io",
        res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY, functions=[function]),
    )
    retries = await nats_client.jetstream().subscribe(f"retry.*.{iid}", ordered_consumer=True)

    await send(platform, batch_body(1))
    async with sink.changed:
        await sink.changed.wait_for(lambda: len(sink.headers) >= 1)
    basic = base64.b64encode(f"u:{SECRET}".encode()).decode()
    assert sink.headers[0]["authorization"] == f"Basic {basic}"  # the function did send it

    retry = await retries.next_msg(timeout=30)
    assert "RetryError" in retry.headers[streams.LAST_ERROR]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        executor = executor_pb2_grpc.ExecutorStub(channel)
        listed = await eventually(  # failure samples are flushed every 0.2 s
            lambda: executor.ListDeliveryFailures(
                executor_pb2.ListDeliveryFailuresRequest(parent=platform.instance_name(iid)),
                metadata=auth(reader),
            ),
            "the failure listed for the reader",
            until=lambda listed: len(listed.failures) >= 1,
        )
    failure = listed.failures[0]
    (trace,) = failure.requests
    assert trace.status == 500 and "[REDACTED]" in trace.url
    assert "[REDACTED]" in failure.error.message and "[REDACTED]" in failure.logs
    kept = [
        listed.SerializeToString().decode("utf-8", errors="replace"),
        *(f"{k}: {v}" for k, v in (retry.headers or {}).items()),
        retry.data.decode("utf-8", errors="replace"),
    ]
    assert_kept_nothing(SECRET, "\n".join(kept))


async def test_a_runs_logs_error_and_trace_carry_no_spelling_of_a_secret(
    pool: RuntimePool, sink: Sink
) -> None:
    sink.status = 500
    for secret in SECRETS:
        settings = {"endpoint": sink.url, "apiKey": secret}
        result = await invoke(pool, LEAKY, settings=settings, secrets=(secret,))
        (outcome,) = result.outcomes
        assert outcome.error_type == "RetryError", outcome.message
        (trace,) = result.requests
        assert trace.status == 500
        kept = [x.message for x in result.logs] + [outcome.message or "", outcome.stack or ""]
        kept += [trace.url, trace.request_body or "", trace.error or ""]
        kept += [v for _, v in trace.request_headers]
        assert_kept_nothing(secret, "\n".join(kept))


async def test_a_previews_returned_value_carries_no_spelling_of_a_secret(
    pool: RuntimePool,
) -> None:
    for secret in SECRETS:
        result = await invoke(
            pool, LEAKY, [{"type": "identify"}], settings={"apiKey": secret}, secrets=(secret,)
        )
        assert result.values == [{"key": "[REDACTED]", "escaped": '"[REDACTED]"'}]
