"""Mailchimp, HubSpot, Mailjet and jsforce (Salesforce) as destination functions call them."""

from __future__ import annotations

import base64

import pytest
from aiohttp import web

from services.runtime import RuntimePool
from tests.runtime.conftest import invoke, value_of
from tests.runtime.fake_apis import FakeApis

MAILCHIMP = "us6.api.mailchimp.com"
HUBSPOT = "api.hubapi.com"
MAILJET = "api.mailjet.com"
SF_LOGIN = "login.salesforce.com"
SF_INSTANCE = "eventfn.my.salesforce.com"


def basic(user: str, password: str) -> str:
    """Return a Basic Authorization header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_mailchimp_lists_add_list_member(sdk_pool: RuntimePool, apis: FakeApis) -> None:
    path = "/3.0/lists/list1/members"
    apis.reply(MAILCHIMP, "POST", path, {"id": "m1", "status": "subscribed"})
    code = """
    async function onIdentify(event, settings) {
      const mailchimp = mailchimplib.mailchimp;
      mailchimp.setConfig({apiKey: settings.apiKey, server: 'us6'});
      const member = await mailchimp.lists.addListMember('list1', {
        email_address: event.traits.email, status: 'subscribed'});
      return member.status;
    }"""
    event = {"type": "identify", "traits": {"email": "a@example.com"}}
    result = await invoke(sdk_pool, code, [event], settings={"apiKey": "k-us6"})
    assert value_of(result) == "subscribed"
    [got] = apis.to(MAILCHIMP)
    assert (got.method, got.path) == ("POST", path)
    assert got.headers["authorization"].startswith("Basic ")
    assert base64.b64decode(got.headers["authorization"][6:]).decode().endswith(":k-us6")
    assert got.json() == {"email_address": "a@example.com", "status": "subscribed"}


async def test_mailchimp_error_surfaces_status_and_detail(
    sdk_pool: RuntimePool, apis: FakeApis
) -> None:
    detail = {
        "title": "Member Exists",
        "status": 400,
        "detail": "a@example.com is already a member",
    }
    apis.reply(MAILCHIMP, "POST", "/3.0/lists/list1/members", detail, status=400)
    code = """
    async function onIdentify(event, settings) {
      const mailchimp = mailchimplib.mailchimp;
      mailchimp.setConfig({apiKey: 'k-us6', server: 'us6'});
      try {
        await mailchimp.lists.addListMember('list1', {
          email_address: 'a@example.com', status: 'subscribed'});
      } catch (err) {
        return [err.status, err.response.body.title];
      }
    }"""
    result = await invoke(sdk_pool, code, [{"type": "identify"}])
    assert value_of(result) == [400, "Member Exists"]


async def test_hubspot_contact_create(sdk_pool: RuntimePool, apis: FakeApis) -> None:
    contact = {
        "id": "501",
        "properties": {"email": "a@example.com"},
        "createdAt": "2024-01-01T00:00:00Z",
        "updatedAt": "2024-01-01T00:00:00Z",
        "archived": False,
    }
    apis.reply(HUBSPOT, "POST", "/crm/v3/objects/contacts", contact, status=201)
    code = """
    async function onIdentify(event, settings) {
      const client = new hubspotlib.hubspot.Client({accessToken: settings.token});
      const created = await client.crm.contacts.basicApi.create({
        properties: {email: event.traits.email}, associations: []});
      return created.id;
    }"""
    event = {"type": "identify", "traits": {"email": "a@example.com"}}
    result = await invoke(sdk_pool, code, [event], settings={"token": "pat-1"})
    assert value_of(result) == "501"
    [got] = apis.to(HUBSPOT)
    assert (got.method, got.path) == ("POST", "/crm/v3/objects/contacts")
    assert got.headers["authorization"] == "Bearer pat-1"
    assert got.json() == {"properties": {"email": "a@example.com"}, "associations": []}


@pytest.mark.parametrize("connect", ["apiConnect", "connect"])
async def test_mailjet_send(sdk_pool: RuntimePool, apis: FakeApis, connect: str) -> None:
    apis.reply(MAILJET, "POST", "/v3.1/send", {"Messages": [{"Status": "success"}]})
    code = """
    async function onTrack(event, settings) {
      const mailJet = nodemailjet.nodemailjet;  // the reference's spelling
      const client = mailJet.CONNECT(settings.key, settings.secret);
      const res = await client.post('send', {version: 'v3.1'}).request({
        Messages: [{From: {Email: 'from@example.com'}, To: [{Email: 'to@example.com'}],
                    Subject: 'Hi', TextPart: event.event}]});
      return res.body.Messages[0].Status;
    }"""
    result = await invoke(
        sdk_pool,
        code.replace("CONNECT", connect),
        [{"type": "track", "event": "Hello"}],
        settings={"key": "mjk", "secret": "mjs"},
    )
    assert value_of(result) == "success"
    [got] = apis.to(MAILJET)
    assert (got.method, got.path) == ("POST", "/v3.1/send")
    assert got.headers["authorization"] == basic("mjk", "mjs")
    assert got.json()["Messages"][0]["TextPart"] == "Hello"


def _soap_login(_request: object) -> web.Response:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns="urn:partner.soap.sforce.com"><soapenv:Body><loginResponse><result>'
        f"<serverUrl>https://{SF_INSTANCE}/services/Soap/u/42.0/00D</serverUrl>"
        "<sessionId>SESSION123</sessionId><userId>005U</userId>"
        "<userInfo><organizationId>00DORG</organizationId></userInfo>"
        "</result></loginResponse></soapenv:Body></soapenv:Envelope>"
    )
    return web.Response(text=xml, content_type="text/xml")


async def test_jsforce_login_and_sobject_create(sdk_pool: RuntimePool, apis: FakeApis) -> None:
    apis.on(SF_LOGIN, "POST", "/services/Soap/u/42.0", _soap_login)
    create = "/services/data/v42.0/sobjects/Lead"
    apis.reply(SF_INSTANCE, "POST", create, {"id": "00Q1", "success": True, "errors": []}, 201)
    code = """
    async function onIdentify(event, settings) {
      const conn = new jsforce.Connection({loginUrl: 'https://login.salesforce.com'});
      await conn.login(settings.username, settings.password + settings.token);
      const ret = await conn.sobject('Lead').create({LastName: event.traits.name, Company: 'Acme'});
      return [ret.id, ret.success, conn.instanceUrl];
    }"""
    settings = {"username": "u@example.com", "password": "pw", "token": "TOK"}
    event = {"type": "identify", "traits": {"name": "Lee"}}
    result = await invoke(sdk_pool, code, [event], settings=settings)
    assert value_of(result) == ["00Q1", True, f"https://{SF_INSTANCE}"]
    [login] = apis.to(SF_LOGIN)
    assert login.headers["soapaction"] == '""'
    assert "<username>u@example.com</username>" in login.text()
    assert "<password>pwTOK</password>" in login.text()
    [created] = apis.to(SF_INSTANCE)
    assert (created.method, created.path) == ("POST", create)
    assert created.headers["authorization"] == "Bearer SESSION123"
    assert created.json() == {"LastName": "Lee", "Company": "Acme"}


async def test_skyflow_insert(sdk_pool: RuntimePool, apis: FakeApis) -> None:
    vault = "abc.vault.skyflowapis.com"
    record = {"skyflow_id": "sid1", "tokens": {"card_number": "tok-1"}}
    apis.reply(vault, "POST", "/v1/vaults/vault1", {"responses": [{"records": [record]}]})
    code = """
    async function onTrack(event, settings) {
      const {Skyflow} = skyflowlib.skyflow;
      const token = jsonwebtoken.sign({sub: 'svc'}, settings.signingKey, {expiresIn: 3600});
      const client = Skyflow.init({vaultID: 'vault1', vaultURL: 'https://abc.vault.skyflowapis.com',
                                   getBearerToken: () => Promise.resolve(token)});
      const records = [{table: 'cards', fields: {card_number: event.properties.card}}];
      const res = await client.insert({records}, {tokens: true});
      return res.records[0].fields;
    }"""
    event = {"type": "track", "properties": {"card": "4111"}}
    result = await invoke(sdk_pool, code, [event], settings={"signingKey": "k"})
    assert value_of(result) == {"skyflow_id": "sid1", "card_number": "tok-1"}
    [got] = apis.to(vault)
    assert got.headers["authorization"].startswith("Bearer ey")
    assert got.json()["records"][0]["fields"] == {"card_number": "4111"}
    assert got.json()["records"][0]["tableName"] == "cards"


async def test_hubspot_error_is_an_api_exception(sdk_pool: RuntimePool, apis: FakeApis) -> None:
    conflict = {"status": "error", "message": "Contact already exists", "category": "CONFLICT"}
    apis.reply(HUBSPOT, "POST", "/crm/v3/objects/contacts", conflict, status=409)
    code = """
    async function onIdentify(event, settings) {
      const client = new hubspotlib.hubspot.Client({accessToken: 'pat-1'});
      try {
        await client.crm.contacts.basicApi.create({properties: {email: 'a@example.com'}});
      } catch (err) {
        return [err.constructor.name, err.code, err.body.category];
      }
    }"""
    result = await invoke(sdk_pool, code, [{"type": "identify"}])
    assert value_of(result) == ["ApiException", 409, "CONFLICT"]


async def test_jsforce_error_carries_salesforces_error_code(
    sdk_pool: RuntimePool, apis: FakeApis
) -> None:
    apis.on(SF_LOGIN, "POST", "/services/Soap/u/42.0", _soap_login)
    missing = [{"errorCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing"}]
    apis.reply(SF_INSTANCE, "POST", "/services/data/v42.0/sobjects/Lead", missing, 400)
    code = """
    async function onIdentify(event, settings) {
      const conn = new jsforce.Connection({loginUrl: 'https://login.salesforce.com'});
      await conn.login('u@example.com', 'pw');
      try {
        await conn.sobject('Lead').create({LastName: 'x'});
      } catch (err) {
        return [err.name, err.errorCode, err.message];
      }
    }"""
    result = await invoke(sdk_pool, code, [{"type": "identify"}])
    assert value_of(result) == [
        "REQUIRED_FIELD_MISSING",
        "REQUIRED_FIELD_MISSING",
        "Required fields are missing",
    ]


async def test_mailjet_error_carries_the_status(sdk_pool: RuntimePool, apis: FakeApis) -> None:
    apis.reply(MAILJET, "POST", "/v3.1/send", {"ErrorMessage": "API key authentication"}, 401)
    code = """
    async function onTrack(event, settings) {
      const client = nodemailjet.nodemailjet.apiConnect('k', 's');
      try {
        await client.post('send', {version: 'v3.1'}).request({Messages: []});
      } catch (err) {
        return [err.statusCode, err.ErrorMessage, err.message];
      }
    }"""
    result = await invoke(sdk_pool, code)
    assert value_of(result) == [
        401,
        "API key authentication",
        'Unsuccessful: Status Code: "401" Message: "API key authentication"',
    ]
