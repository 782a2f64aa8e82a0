"""SDKs and Node's http/https in a hostile function: every request still passes the egress
policy, whatever option the SDK offers to steer it (endpoint, proxy, agent, lookup, socket), and
the SDK machinery leaves no way to the host interface (issue 17)."""

from __future__ import annotations

import pytest

from services.runtime import OutcomeKind, RuntimePool
from tests.runtime.conftest import invoke
from tests.security.conftest import Recorder


async def _value(pool: RuntimePool, code: str) -> object:
    result = await invoke(pool, code)
    outcome = result.outcomes[0]
    assert outcome.kind == OutcomeKind.DELIVERED, outcome
    assert result.values is not None
    return result.values[0]


def _https_request(options: str) -> str:
    """A handler making one Node https/http request and returning its error (or status)."""
    return f"""async function onTrack() {{
      return await new Promise((resolve) => {{
        let req;
        try {{
          req = https.request({options}, (res) => resolve(['response', res.statusCode]));
        }} catch (err) {{
          resolve(['thrown', err.code || null, err.message]);
          return;
        }}
        req.on('error', (err) => resolve(['error', err.code || null, err.message]));
        req.end();
      }});
    }}"""


async def test_https_request_to_the_metadata_address_is_refused(strict_pool: RuntimePool) -> None:
    got = await _value(
        strict_pool, _https_request("{host: '169.254.169.254', path: '/latest/meta-data/'}")
    )
    assert got[:2] == ["error", "EGRESS_REFUSED"]
    assert "cloud metadata" in str(got[2])


@pytest.mark.parametrize(
    "steer",
    [
        "{}",
        "{agent: new https.Agent({keepAlive: true, host: '127.0.0.1'})}",
        "{lookup: (host, opts, cb) => cb(null, '8.8.8.8', 4)}",
        "{createConnection: () => { throw new Error('never called') }}",
        "{headers: {Host: 'api.example.com'}}",
        "{setHost: false, family: 4, localAddress: '127.0.0.1'}",
    ],
)
async def test_http_options_cannot_steer_a_request_past_the_policy(
    strict_pool: RuntimePool, recorder: Recorder, steer: str
) -> None:
    options = (
        f"Object.assign({{protocol: 'http:', host: '127.0.0.1', port: {recorder.port}, "
        f"path: '/steered'}}, {steer})"
    )
    got = await _value(strict_pool, _https_request(options))
    assert got[:2] == ["error", "EGRESS_REFUSED"], got
    assert "/steered" not in recorder.paths()


async def test_unix_socket_requests_fail_clearly(strict_pool: RuntimePool) -> None:
    got = await _value(
        strict_pool, _https_request("{socketPath: '/var/run/docker.sock', path: '/'}")
    )
    assert got[0] == "thrown"
    assert "Unix sockets are not available" in str(got[2])


async def test_aws_endpoint_and_proxy_options_pointing_inside_are_refused(
    strict_pool: RuntimePool, recorder: Recorder
) -> None:
    code = f"""async function onTrack() {{
      const out = [];
      const base = {{accessKeyId: 'a', secretAccessKey: 'b', region: 'us-east-1', maxRetries: 0}};
      const clients = [
        new AWS.S3(Object.assign({{endpoint: '{recorder.url}', s3ForcePathStyle: true}}, base)),
        new AWS.S3(Object.assign({{httpOptions: {{proxy: '{recorder.url}'}}}}, base)),
        new AWS.SQS(Object.assign({{endpoint: 'http://169.254.169.254'}}, base)),
      ];
      for (const c of clients) {{
        try {{
          const params = {{Bucket: 'b', Key: 'aws-steered', Body: 'x'}};
          if (c.putObject) await c.putObject(params).promise();
          else await c.sendMessage({{QueueUrl: 'http://169.254.169.254/q', MessageBody: 'x'}})
            .promise();
          out.push('sent');
        }} catch (err) {{ out.push([err.code, err.message]) }}
      }}
      return out;
    }}"""
    endpoint, proxied, metadata = await _value(strict_pool, code)
    assert endpoint[0] == metadata[0] == proxied[0] == "NetworkingError"
    assert "a loopback address; eventfn refuses it" in endpoint[1]
    assert "a cloud metadata address; eventfn refuses it" in metadata[1]
    # An SDK's own proxy setting is not a way around the platform's egress: the request goes
    # to its target (here a name this sandbox cannot resolve), never to the named proxy.
    assert "ENOTFOUND s3.amazonaws.com" in proxied[1]
    assert not [p for p in recorder.paths() if "aws-steered" in p]


async def test_stripe_host_option_pointing_inside_is_refused(
    strict_pool: RuntimePool, recorder: Recorder
) -> None:
    code = f"""async function onTrack() {{
      const client = stripe('sk_test', {{host: '127.0.0.1', port: {recorder.port},
                                          protocol: 'http', maxNetworkRetries: 0}});
      try {{ await client.customers.create({{email: 'stripe-steered@example.com'}}) }}
      catch (err) {{ return [err.type, err.message] }}
    }}"""
    got = await _value(strict_pool, code)
    assert got[0] == "StripeConnectionError"
    assert not [b for _, _, b in recorder.seen if b"stripe-steered" in b]


async def test_requests_outside_a_handler_are_not_sent(
    one_worker: RuntimePool, recorder: Recorder
) -> None:
    code = f"""
    let early = null;
    const req = https.request({{protocol: 'http:', host: '127.0.0.1', port: {recorder.port},
                               path: '/at-load'}});
    req.on('error', (err) => {{ early = err.code }});
    req.end();
    async function onTrack() {{ return early }}"""
    assert await _value(one_worker, code) == "ENOINVOCATION"
    assert "/at-load" not in recorder.paths()


async def test_http_does_not_follow_redirects(one_worker: RuntimePool, recorder: Recorder) -> None:
    code = _https_request(
        f"{{protocol: 'http:', host: '127.0.0.1', port: {recorder.port}, "
        "path: '/redirect?to=http://169.254.169.254/latest/'}"
    )
    assert await _value(one_worker, code) == ["response", 302]


async def test_sdk_registration_is_gone_before_user_code_runs(strict_pool: RuntimePool) -> None:
    # The code names AWS, so its chunk registered a factory before this code ran.
    code = """
    const seen = typeof __eventfn_sdk__;
    globalThis.__eventfn_sdk__ = () => { throw new Error('hijacked') };
    async function onTrack() {
      return [seen, typeof AWS.S3, Object.getOwnPropertyNames(globalThis).filter(
        (n) => n.startsWith('__eventfn') && n !== '__eventfn_sdk__')];
    }"""
    assert await _value(strict_pool, code) == ["undefined", "function", ["__eventfn__"]]


async def test_a_failing_sdk_does_not_hand_out_runtime_internals(strict_pool: RuntimePool) -> None:
    # Node's require is not a global, and SDK errors carry no runtime object.
    code = """async function onTrack() {
      let frames = null;
      const prev = Error.prepareStackTrace;
      Error.prepareStackTrace = (err, stack) => stack.map((f) => typeof f.getFunction());
      try { new AWS.S3({region: 'us-east-1'}).putObject({}, () => {}) } catch (e) {}
      try { require('fs') } catch (e) { frames = e.constructor.name }
      Error.prepareStackTrace = prev;
      return [typeof require, typeof process, frames];
    }"""
    assert await _value(strict_pool, code) == ["undefined", "undefined", "ReferenceError"]
