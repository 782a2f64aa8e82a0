"""Node's `https`/`http` in functions: ClientRequest/IncomingMessage semantics on the host's
request queue (streamed request bodies, streamed responses, timeouts, decoded bodies)."""

from __future__ import annotations

import orjson

from services.runtime import RuntimePool
from tests.runtime.conftest import Sink, invoke, value_of


def _request(options: str, body: str = "req.end();") -> str:
    """A handler making one request and returning what the response looked like."""
    return f"""async function onTrack() {{
      return await new Promise((resolve, reject) => {{
        const req = https.request({options}, (res) => {{
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () => resolve({{
            status: res.statusCode, message: res.statusMessage, headers: res.headers,
            raw: res.rawHeaders.length % 2, complete: res.complete,
            body: Buffer.concat(chunks).toString('utf8')}}));
        }});
        req.on('error', (err) => resolve({{error: err.code, message: err.message}}));
        {body}
      }});
    }}"""


def _sink(sink: Sink, path: str, method: str = "GET") -> str:
    port = sink.url.rsplit(":", 1)[1]
    return (
        f"{{protocol: 'http:', hostname: '127.0.0.1', port: {port}, path: '{path}', "
        f"method: '{method}'}}"
    )


async def test_streamed_request_body_and_response(pool: RuntimePool, sink: Sink) -> None:
    body = """
        req.setHeader('Content-Type', 'application/json');
        req.setHeader('Transfer-Encoding', 'chunked');
        req.write('{"a":');
        req.write(Buffer.from('1,'));
        req.end('"b":2}');"""
    result = await invoke(pool, _request(_sink(sink, "/echo", "POST"), body))
    got = value_of(result)
    assert isinstance(got, dict)
    assert (got["status"], got["message"], got["raw"], got["complete"]) == (200, "OK", 0, True)
    assert got["headers"]["content-type"].startswith("application/json")
    echoed = orjson.loads(got["body"])
    assert (echoed["method"], echoed["body"]) == ("POST", '{"a":1,"b":2}')
    assert echoed["headers"]["content-type"] == "application/json"
    assert "transfer-encoding" not in echoed["headers"]
    assert [(t.method, t.status) for t in result.requests] == [("POST", 200)]


async def test_url_string_and_get(pool: RuntimePool, sink: Sink) -> None:
    code = f"""async function onTrack() {{
      return await new Promise((resolve) => {{
        https.get('{sink.url}/json?x=1', (res) => {{
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c) => {{ text += c }});
          res.on('end', () => resolve([res.statusCode, res.headers['x-test'], JSON.parse(text)]));
        }}).on('error', (err) => resolve(['error', err.message]));
      }});
    }}"""
    # Unlike Node's, the `https` global also takes http: URLs (there is no `http` global).
    assert value_of(await invoke(pool, code)) == [200, "yes", {"ok": True, "n": 1}]


async def test_gzip_response_arrives_decoded(pool: RuntimePool, sink: Sink) -> None:
    got = value_of(await invoke(pool, _request(_sink(sink, "/gzip"))))
    assert isinstance(got, dict)
    assert got["body"] == '{"zipped":true}'
    assert "content-encoding" not in got["headers"]
    assert got["headers"]["content-length"] == str(len('{"zipped":true}'))


async def test_timeout_emits_timeout_then_the_request_fails(pool: RuntimePool, sink: Sink) -> None:
    body = """
        req.setTimeout(200, () => { timedOut = true; req.destroy(new Error('gave up')) });
        req.end();"""
    code = _request(_sink(sink, "/slow?s=2"), body).replace(
        "async function onTrack() {", "let timedOut = false;\nasync function onTrack() {"
    )
    code = code.replace(
        "req.on('error', (err) => resolve({error: err.code, message: err.message}));",
        "req.on('error', (err) => resolve({timedOut, message: err.message}));",
    )
    got = value_of(await invoke(pool, code))
    assert got == {"timedOut": True, "message": "gave up"}


async def test_redirects_are_returned_not_followed(pool: RuntimePool, sink: Sink) -> None:
    got = value_of(await invoke(pool, _request(_sink(sink, f"/redirect?to={sink.url}/text"))))
    assert isinstance(got, dict)
    assert got["status"] == 302
    assert got["headers"]["location"].endswith("/text")


async def test_abort_before_the_round_sends_nothing_back(pool: RuntimePool, sink: Sink) -> None:
    code = f"""async function onTrack() {{
      const req = https.request({_sink(sink, "/echo?aborted=1", "POST")});
      const events = [];
      req.on('abort', () => events.push('abort'));
      req.on('close', () => events.push('close'));
      req.on('response', () => events.push('response'));
      req.end('x');
      req.abort();
      await new Promise((ok) => setTimeout(ok, 50));
      return [events, req.aborted, req.destroyed];
    }}"""
    got = value_of(await invoke(pool, code))
    assert got == [["abort", "close"], True, True]
    assert not [r for r in sink.received if r["path"] == "/echo?aborted=1"]
