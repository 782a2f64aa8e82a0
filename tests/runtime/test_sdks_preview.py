"""Preview shows every SDK request in its request trace, secrets redacted (issue 17)."""

from __future__ import annotations

import orjson
from aiohttp import web

from services.runtime import OutcomeKind, RuntimePool
from services.runtime.preview import run_preview
from tests.runtime.fake_apis import FakeApis


async def test_preview_traces_each_sdk_request(sdk_pool: RuntimePool, apis: FakeApis) -> None:
    apis.reply("api.stripe.com", "POST", "/v1/customers", {"id": "cus_1"})
    apis.reply("api.twilio.com", "POST", "/2010-04-01/Accounts/AC1/Messages.json", {"sid": "SM1"})
    apis.on("api.sendgrid.com", "POST", "/v3/mail/send", lambda _r: web.Response(status=202))
    apis.on("eventfn-b1.s3.amazonaws.com", "PUT", "/k", lambda _r: web.Response())
    code = """
    async function onIdentify(event, settings) {
      await stripe(settings.stripeKey).customers.create({email: event.traits.email});
      await twilio('AC1', settings.twilioToken).messages.create({to: '+1', from: '+2', body: 'hi'});
      sendgrid.mail.setApiKey(settings.sendgridKey);
      await sendgrid.mail.send({
        to: 'a@example.com', from: 'b@example.com', subject: 's', text: 't'});
      const s3 = new AWS.S3({accessKeyId: 'AKID', secretAccessKey: settings.awsSecret,
                             region: 'us-east-1'});
      await s3.putObject({Bucket: 'eventfn-b1', Key: 'k', Body: 'x'}).promise();
      return 'done';
    }"""
    settings = {
        "stripeKey": "sk_live_secret",
        "twilioToken": "twilio-secret",
        "sendgridKey": "SG.secret",
        "awsSecret": "aws-secret",
    }
    event = orjson.dumps({"type": "identify", "traits": {"email": "a@example.com"}})
    result = await run_preview(
        sdk_pool, code, event, settings, secrets=tuple(settings.values()), timeout_s=10
    )
    assert result.outcome == OutcomeKind.DELIVERED, result.error
    assert [(t.method, t.url, t.status) for t in result.requests] == [
        ("POST", "https://api.stripe.com/v1/customers", 200),
        ("POST", "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json", 200),
        ("POST", "https://api.sendgrid.com/v3/mail/send", 202),
        ("PUT", "https://eventfn-b1.s3.amazonaws.com/k", 200),
    ]
    stripe_trace = result.requests[0]
    assert ("Authorization", "Bearer [REDACTED]") in stripe_trace.request_headers
    assert stripe_trace.request_body == "email=a%40example.com"
    for trace in result.requests:
        for secret in settings.values():
            assert secret not in repr(trace)
