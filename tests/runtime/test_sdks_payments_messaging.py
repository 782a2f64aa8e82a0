"""Stripe (8.115.0), Twilio (3.68.0) and SendGrid (7.4.7) as destination functions call them."""

from __future__ import annotations

import base64
import urllib.parse

from aiohttp import web

from services.runtime import RuntimePool
from tests.runtime.conftest import invoke, value_of
from tests.runtime.fake_apis import FakeApis

STRIPE = "api.stripe.com"
TWILIO = "api.twilio.com"
SENDGRID = "api.sendgrid.com"


async def test_stripe_customers_create(sdk_pool: RuntimePool, apis: FakeApis) -> None:
    apis.reply(STRIPE, "POST", "/v1/customers", {"id": "cus_123", "object": "customer"})
    code = """
    async function onIdentify(event, settings) {
      const client = stripe(settings.apiKey);
      const customer = await client.customers.create({
        email: event.traits.email, metadata: {userId: event.userId}});
      return customer.id;
    }"""
    event = {"type": "identify", "userId": "u1", "traits": {"email": "a@example.com"}}
    result = await invoke(sdk_pool, code, [event], settings={"apiKey": "sk_test_123"})
    assert value_of(result) == "cus_123"
    [got] = apis.to(STRIPE)
    assert (got.method, got.path) == ("POST", "/v1/customers")
    assert got.headers["authorization"] == "Bearer sk_test_123"
    assert urllib.parse.parse_qs(got.text()) == {
        "email": ["a@example.com"],
        "metadata[userId]": ["u1"],
    }
    assert [(t.method, t.url, t.status) for t in result.requests] == [
        ("POST", f"https://{STRIPE}/v1/customers", 200)
    ]


async def test_stripe_error_is_a_stripe_error_class(sdk_pool: RuntimePool, apis: FakeApis) -> None:
    apis.reply(
        STRIPE,
        "POST",
        "/v1/customers",
        {"error": {"type": "invalid_request_error", "message": "Invalid email", "param": "email"}},
        status=400,
    )
    code = """
    async function onIdentify(event, settings) {
      try {
        await stripe(settings.apiKey).customers.create({email: 'bad'});
      } catch (err) {
        return [err instanceof stripe.errors.StripeInvalidRequestError, err.type, err.param,
                err.statusCode, err.message];
      }
    }"""
    result = await invoke(sdk_pool, code, [{"type": "identify"}], settings={"apiKey": "sk_x"})
    assert value_of(result) == [True, "StripeInvalidRequestError", "email", 400, "Invalid email"]


async def test_twilio_messages_create(sdk_pool: RuntimePool, apis: FakeApis) -> None:
    path = "/2010-04-01/Accounts/AC123/Messages.json"
    apis.reply(TWILIO, "POST", path, {"sid": "SM1", "status": "queued"}, status=201)
    code = """
    async function onTrack(event, settings) {
      const client = twilio(settings.accountSid, settings.authToken);
      const message = await client.messages.create({
        to: '+15005550006', from: settings.from, body: `You did ${event.event}`});
      return [message.sid, message.status];
    }"""
    settings = {"accountSid": "AC123", "authToken": "tok", "from": "+15005550001"}
    result = await invoke(sdk_pool, code, [{"type": "track", "event": "Order"}], settings=settings)
    assert value_of(result) == ["SM1", "queued"]
    [got] = apis.to(TWILIO)
    assert (got.method, got.path) == ("POST", path)
    assert got.headers["authorization"] == "Basic " + base64.b64encode(b"AC123:tok").decode()
    assert urllib.parse.parse_qs(got.text()) == {
        "To": ["+15005550006"],
        "From": ["+15005550001"],
        "Body": ["You did Order"],
    }


async def test_twilio_error_is_a_rest_exception_and_retry_error_retries(
    sdk_pool: RuntimePool, apis: FakeApis
) -> None:
    path = "/2010-04-01/Accounts/AC123/Messages.json"
    body = {"code": 20429, "message": "Too many requests", "status": 429}
    apis.reply(TWILIO, "POST", path, body, status=429)
    code = """
    async function onTrack(event, settings) {
      try {
        await twilio('AC123', 'tok').messages.create({to: '+1', from: '+2', body: 'b'});
      } catch (err) {
        if (err.constructor.name === 'RestException' && err.status === 429 && err.code === 20429) {
          throw new RetryError(err.message);
        }
        throw err;
      }
    }"""
    result = await invoke(sdk_pool, code)
    outcome = result.outcomes[0]
    assert (outcome.kind, outcome.error_type, outcome.message) == (
        "retry",
        "RetryError",
        "Too many requests",
    )


async def test_sendgrid_mail_send(sdk_pool: RuntimePool, apis: FakeApis) -> None:
    apis.on(SENDGRID, "POST", "/v3/mail/send", lambda _r: web.Response(status=202))
    code = """
    async function onTrack(event, settings) {
      sendgrid.mail.setApiKey(settings.apiKey);
      const [response] = await sendgrid.mail.send({
        to: 'to@example.com', from: 'from@example.com', subject: 'Welcome',
        text: `Hi ${event.userId}`});
      return response.statusCode;
    }"""
    result = await invoke(
        sdk_pool, code, [{"type": "track", "userId": "u9"}], settings={"apiKey": "SG.k"}
    )
    assert value_of(result) == 202
    [got] = apis.to(SENDGRID)
    assert (got.method, got.path) == ("POST", "/v3/mail/send")
    assert got.headers["authorization"] == "Bearer SG.k"
    body = got.json()
    assert body["personalizations"] == [{"to": [{"email": "to@example.com"}]}]
    assert body["from"] == {"email": "from@example.com"}
    assert body["subject"] == "Welcome"
    assert body["content"] == [{"type": "text/plain", "value": "Hi u9"}]


async def test_sendgrid_client_request_and_error_class(
    sdk_pool: RuntimePool, apis: FakeApis
) -> None:
    apis.reply(SENDGRID, "GET", "/v3/scopes", {"scopes": ["mail.send"]})
    apis.reply(SENDGRID, "POST", "/v3/mail/send", {"errors": [{"message": "bad from"}]}, status=400)
    code = """
    async function onTrack(event, settings) {
      sendgrid.client.setApiKey(settings.apiKey);
      const [res, body] = await sendgrid.client.request({method: 'GET', url: '/v3/scopes'});
      sendgrid.mail.setApiKey(settings.apiKey);
      try {
        await sendgrid.mail.send({to: 'a@example.com', from: 'x', subject: 's', text: 't'});
      } catch (err) {
        return [res.statusCode, body.scopes, err.constructor.name, err.code,
                err.response.body.errors[0].message];
      }
    }"""
    result = await invoke(sdk_pool, code, settings={"apiKey": "SG.k"})
    assert value_of(result) == [200, ["mail.send"], "ResponseError", 400, "bad from"]
