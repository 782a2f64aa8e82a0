"""Each global of the reference's runtime section, exercised in a real isolate."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import pytest

from services.runtime import RuntimePool
from tests.runtime.conftest import invoke, value_of

# (expression, expected value) — each runs inside an async onTrack handler.
CASES = [
    ("_.chunk([1, 2, 3], 2)", [[1, 2], [3]]),
    ("_.get({a: {b: 4}}, 'a.b')", 4),
    ("moment.tz('2020-01-01T00:00:00Z', 'America/New_York').format()", "2019-12-31T19:00:00-05:00"),
    ("moment('2020-02-03').add(1, 'day').format('YYYY-MM-DD')", "2020-02-04"),
    # ICU data loaded (services/runtime/v8_import.py): without it these threw "Icu error" or
    # killed the worker (SIGTRAP for Intl.DateTimeFormat, SIGSEGV for Intl.Segmenter).
    ("(1234.5).toLocaleString('de-DE')", "1.234,5"),
    ("'a'.localeCompare('b')", -1),
    ("new Date(0).toLocaleDateString('en-US', {timeZone: 'UTC'})", "1/1/1970"),
    ("[...new Intl.Segmenter('en', {granularity: 'word'}).segment('a b')].length", 3),
    ("xml({a: [{_attr: {k: 'v'}}, 'b']})", '<a k="v">b</a>'),
    ("await new xml2js.Parser().parseStringPromise('<a><b>1</b></a>')", {"a": {"b": ["1"]}}),
    ("new xml2js.Builder({headless: true}).buildObject({a: 1})", "<a>1</a>"),
    ("jsonwebtoken.verify(jsonwebtoken.sign({sub: 'u1'}, 'k'), 'k').sub", "u1"),
    ("jsonwebtoken.decode(jsonwebtoken.sign({sub: 'u2'}, 'k', {algorithm: 'HS512'})).sub", "u2"),
    (
        "uuidv5.uuidv5('url', 'http://google/com/page')",
        str(uuid.uuid5(uuid.NAMESPACE_URL, "http://google/com/page")),
    ),
    ("uuidv5.uuidv5('dns', 'google.com')", str(uuid.uuid5(uuid.NAMESPACE_DNS, "google.com"))),
    (
        "zlib.zlib.inflateSync(Buffer.from(zlib.zlib.deflateSync('something'))).toString()",
        "something",
    ),
    ("zlib.zlib.gunzipSync(zlib.zlib.gzipSync('gz')).toString()", "gz"),
    (
        "await new Promise((ok, ko) => zlib.zlib.deflate('cb', (e, d) => e ? ko(e) : "
        "ok(zlib.zlib.inflateSync(d).toString())))",
        "cb",
    ),
    ("typeof fetchretrylib.fetchretry(fetch)", "function"),
    (
        "libphonenumberjslib.libphonenumberjs.parsePhoneNumber('+12133734253').number",
        "+12133734253",
    ),
    (
        "new OAuth.OAuth('https://a/r', 'https://a/a', 'key', 'secret', '1.0', null, "
        "'HMAC-SHA1')._signatureMethod",
        "HMAC-SHA1",
    ),
    (
        "typeof new OAuth.OAuth2('id', 'secret', 'https://a/', null, 'token').getAuthorizeUrl",
        "function",
    ),
    ("crypto.createHash('md5').update('abc').digest('hex')", hashlib.md5(b"abc").hexdigest()),
    ("crypto.createHash('sha1').update('abc').digest('hex')", hashlib.sha1(b"abc").hexdigest()),
    ("crypto.createHash('sha256').update('abc').digest('hex')", hashlib.sha256(b"abc").hexdigest()),
    ("crypto.createHash('sha512').update('abc').digest('hex')", hashlib.sha512(b"abc").hexdigest()),
    (
        "crypto.createHmac('sha256', 'key').update('abc').digest('hex')",
        hmac.new(b"key", b"abc", "sha256").hexdigest(),
    ),
    ("crypto.randomBytes(16).length", 16),
    ("/^[0-9a-f-]{36}$/.test(crypto.randomUUID()) && crypto.randomUUID()[14]", "4"),
    ("crypto.randomUUID() !== crypto.randomUUID()", True),
    (
        "[crypto.timingSafeEqual(Buffer.from('ab'), Buffer.from('ab')), "
        "crypto.timingSafeEqual(Buffer.from('ab'), Buffer.from('ac'))]",
        [True, False],
    ),
    ("btoa('hello')", "aGVsbG8="),
    ("atob('aGVsbG8=')", "hello"),
    ("Buffer.from('héllo').toString('base64')", "aMOpbGxv"),
    ("Buffer.concat([Buffer.from([1]), Buffer.alloc(1)]).length", 2),
    ("new URL('/p?q=1', 'https://example.com').href", "https://example.com/p?q=1"),
    ("new URL('https://example.com/a?b=2').searchParams.get('b')", "2"),
    ("new URLSearchParams({a: '1', b: 'x y'}).toString()", "a=1&b=x+y"),
    ("new TextDecoder().decode(new TextEncoder().encode('é€'))", "é€"),
    ("new TextEncoder().encode('é').length", 2),
    ("new Headers({'X-A': '1'}).get('x-a')", "1"),
    ("new Response('{\"a\":1}', {status: 201}).status", 201),
    ("await new Response('{\"a\":1}').json()", {"a": 1}),
    ("new Request('https://example.com/x', {method: 'post'}).method", "POST"),
    ("await new Promise(ok => setTimeout(() => ok('fired'), 20))", "fired"),
    (
        "(() => { const t = setTimeout(() => {}, 10); clearTimeout(t); return 'cleared' })()",
        "cleared",
    ),
    (
        "new FormData().getHeaders()['content-type'].startsWith('multipart/form-data; boundary=')",
        True,
    ),
    (
        "[typeof RetryError, typeof EventNotSupported, typeof InvalidEventPayload, "
        "typeof ValidationError]",
        ["function"] * 4,
    ),
    ("[typeof require, typeof process, typeof module, typeof exports]", ["undefined"] * 4),
    ("await cache.load('k', 1000, async () => 'v1')", "v1"),
]


@pytest.mark.parametrize(("expression", "expected"), CASES, ids=[c[0][:50] for c in CASES])
async def test_global(pool: RuntimePool, expression: str, expected: object) -> None:
    code = f"async function onTrack(event, settings) {{ return {expression} }}"
    result = await invoke(pool, code)
    assert value_of(result) == expected


async def test_sdk_global_reached_only_by_a_computed_name_is_a_clear_reference_error(
    pool: RuntimePool,
) -> None:
    # SDK chunks load for code that names their global (services/runtime/sdks.py).
    result = await invoke(pool, "async function onTrack() { return globalThis['AW' + 'S'].S3 }")
    outcome = result.outcomes[0]
    assert (outcome.kind, outcome.error_type) == ("failure", "ReferenceError")
    assert outcome.message is not None and '"AWS"' in outcome.message


async def test_reference_style_reassignment_of_exposed_objects(pool: RuntimePool) -> None:
    # The reference's own examples assign to the global: `uuidv5 = uuidv5.uuidv5`.
    code = """
    zlib = zlib.zlib;
    async function onTrack() {
      uuidv5 = uuidv5.uuidv5;
      return [typeof uuidv5, zlib.inflateSync(zlib.deflateSync('z')).toString()]
    }"""
    result = await invoke(pool, code)
    assert value_of(result) == ["function", "z"]


async def test_globals_persist_between_invocations(pool: RuntimePool) -> None:
    code = "let count = 0\nasync function onTrack() { count += 1; return count }"
    first = await invoke(pool, code, key="persist:1")
    second = await invoke(pool, code, key="persist:1")
    assert (value_of(first), value_of(second)) == (1, 2)


async def test_sloppy_script_implicit_globals_and_top_level_web_apis(pool: RuntimePool) -> None:
    code = """
    const base = new URL('https://api.example.com/v1/');
    const auth = btoa('user:pass');
    const h = new Headers({Authorization: 'Basic ' + auth});
    function onTrack(event) {
      undeclared = event.event;          // sloppy mode: creates a global
      var names = [];
      for (k in event.properties) names.push(k);   // implicit global loop variable
      return [undeclared, names, h.get('authorization'), base.host];
    }"""
    result = await invoke(pool, code, [{"type": "track", "event": "E", "properties": {"a": 1}}])
    assert value_of(result) == ["E", ["a"], "Basic dXNlcjpwYXNz", "api.example.com"]


async def test_cache_load_calls_loader_once_until_deleted(pool: RuntimePool) -> None:
    code = """
    let calls = 0;
    async function onTrack(event) {
      if (event.event === 'delete') { cache.delete('t'); return null }
      return cache.load('t', -1, async () => { calls += 1; return 'token-' + calls })
    }"""
    key = "cache:1"
    got = [
        value_of(await invoke(pool, code, [{"type": "track", "event": e}], key=key))
        for e in ("a", "b", "delete", "c")
    ]
    assert got == ["token-1", "token-1", None, "token-2"]


async def test_console_levels_are_captured(pool: RuntimePool) -> None:
    code = """async function onTrack() {
      console.log('l', 1, {a: 1}); console.info('i'); console.warn('w'); console.error('e')
    }"""
    result = await invoke(pool, code)
    assert [(x.level, x.message) for x in result.logs] == [
        ("log", "l 1 { a: 1 }"),
        ("info", "i"),
        ("warn", "w"),
        ("error", "e"),
    ]


async def test_settings_is_always_an_object(pool: RuntimePool) -> None:
    code = "async function onTrack(event, { apiKey }) { return apiKey === undefined }"
    assert value_of(await invoke(pool, code)) is True


async def test_event_reaches_handler_exactly_as_sent(pool: RuntimePool) -> None:
    event = {"type": "track", "custom": {"deep": [1, None, "x"]}, "n": 1.5}
    code = "function onTrack(event) { return event }"
    assert value_of(await invoke(pool, code, [event])) == event


async def test_jsonwebtoken_rs256_with_a_pem_key(pool: RuntimePool) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    code = """async function onTrack(event, settings) {
      const token = jsonwebtoken.sign({sub: 'svc'}, settings.privateKey, {algorithm: 'RS256'});
      return jsonwebtoken.verify(token, settings.publicKey, {algorithms: ['RS256']}).sub
    }"""
    result = await invoke(pool, code, settings={"privateKey": private, "publicKey": public})
    assert value_of(result) == "svc"
