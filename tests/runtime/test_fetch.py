"""fetch() with node-fetch v2 behaviour, performed by the host against a real local server."""

from __future__ import annotations

import time

import orjson
import pytest

from services.runtime import RuntimePool
from tests.runtime.conftest import Sink, invoke, value_of


async def test_json_status_headers(pool: RuntimePool, sink: Sink) -> None:
    code = f"""async function onTrack() {{
      const res = await fetch('{sink.url}/json');
      return [res.ok, res.status, res.statusText, res.headers.get('x-test'),
              res.headers.get('Content-Type'), await res.json()]
    }}"""
    assert value_of(await invoke(pool, code)) == [
        True,
        200,
        "OK",
        "yes",
        "application/json; charset=utf-8",
        {"ok": True, "n": 1},
    ]


async def test_text_buffer_and_binary(pool: RuntimePool, sink: Sink) -> None:
    code = f"""async function onTrack() {{
      const t = await (await fetch('{sink.url}/text')).text();
      const b = await (await fetch('{sink.url}/binary')).buffer();
      const z = await (await fetch('{sink.url}/gzip')).json();
      return [t, b.length, b[255], Buffer.isBuffer(b), z]
    }}"""
    assert value_of(await invoke(pool, code)) == ["héllo", 256, 255, True, {"zipped": True}]


async def test_error_statuses_resolve_not_reject(pool: RuntimePool, sink: Sink) -> None:
    code = f"""async function onTrack() {{
      const r = await fetch('{sink.url}/status/503');
      return [r.ok, r.status, await r.text()]
    }}"""
    assert value_of(await invoke(pool, code)) == [False, 503, "status 503"]


async def test_post_bodies_and_headers(pool: RuntimePool, sink: Sink) -> None:
    code = f"""async function onTrack() {{
      const out = [];
      const send = async (body, headers) => {{
        const r = await fetch(new URL('{sink.url}/echo'), {{method: 'POST', body, headers}});
        const seen = await r.json();
        out.push([seen.method, seen.headers['content-type'] || null, seen.body,
                  seen.headers['x-key'] || null]);
      }};
      await send(JSON.stringify({{a: 1}}), {{'Content-Type': 'application/json', 'X-Key': 'k'}});
      await send(new URLSearchParams({{a: '1', b: 'x y'}}), new Headers({{'X-Key': 'h'}}));
      await send(Buffer.from('raw'));
      const form = new FormData(); form.append('f', 'v');
      await send(form, form.getHeaders());
      return out
    }}"""
    got = value_of(await invoke(pool, code))
    assert isinstance(got, list)
    assert got[0] == ["POST", "application/json", '{"a":1}', "k"]
    assert got[1] == ["POST", "application/x-www-form-urlencoded;charset=UTF-8", "a=1&b=x+y", "h"]
    assert got[2] == ["POST", None, "raw", None]
    assert got[3][1].startswith("multipart/form-data; boundary=")
    assert 'name="f"\r\n\r\nv\r\n' in got[3][2]


async def test_redirect_followed_and_reported(pool: RuntimePool, sink: Sink) -> None:
    code = f"""async function onTrack() {{
      const r = await fetch('{sink.url}/redirect?to=/json');
      const m = await fetch('{sink.url}/redirect?to=/json', {{redirect: 'manual'}});
      let err = null;
      try {{ await fetch('{sink.url}/redirect?to=/json', {{redirect: 'error'}}) }}
      catch (e) {{ err = e.type }}
      return [r.status, r.redirected, r.url.endsWith('/json'), m.status,
              m.headers.get('location'), err]
    }}"""
    assert value_of(await invoke(pool, code)) == [
        200,
        True,
        True,
        302,
        f"{sink.url}/json",
        "no-redirect",
    ]


async def test_connection_refused_rejects_with_fetch_error(pool: RuntimePool) -> None:
    code = """async function onTrack() {
      try { await fetch('http://127.0.0.1:1/'); return 'no error' }
      catch (e) { return [e.name, e.type, e.code, e.message] }
    }"""
    assert value_of(await invoke(pool, code)) == [
        "FetchError",
        "system",
        "ECONNREFUSED",
        "request to http://127.0.0.1:1/ failed, reason: connect ECONNREFUSED 127.0.0.1:1",
    ]


async def test_timeout_option(pool: RuntimePool, sink: Sink) -> None:
    code = f"""async function onTrack() {{
      try {{ await fetch('{sink.url}/slow?s=2', {{timeout: 100}}); return 'no error' }}
      catch (e) {{ return [e.type, e.message] }}
    }}"""
    assert value_of(await invoke(pool, code)) == [
        "request-timeout",
        f"network timeout at: {sink.url}/slow?s=2",
    ]


async def test_concurrent_fetches_in_one_round(pool: RuntimePool, sink: Sink) -> None:
    code = f"""async function onTrack(event) {{
      const rs = await Promise.all([1, 2, 3].map(i => fetch('{sink.url}/echo?i=' + i)));
      return (await Promise.all(rs.map(r => r.json()))).map(s => s.path)
    }}"""
    assert value_of(await invoke(pool, code)) == ["/echo?i=1", "/echo?i=2", "/echo?i=3"]


async def test_request_trace_has_bodies_and_redacts_secrets(pool: RuntimePool, sink: Sink) -> None:
    code = f"""async function onTrack(e, settings) {{
      console.log('key is', settings.apiKey);
      await fetch('{sink.url}/echo', {{method: 'POST', body: 'k=' + settings.apiKey,
                                       headers: {{Authorization: 'Bearer ' + settings.apiKey}}}});
    }}"""
    result = await invoke(
        pool, code, settings={"apiKey": "s3cr3t-value"}, secrets=("s3cr3t-value",)
    )
    dump = orjson.dumps([result.logs, result.requests]).decode()
    assert "s3cr3t-value" not in dump
    (trace,) = result.requests
    assert trace.status == 200 and trace.method == "POST"
    assert trace.request_body == "k=[REDACTED]"
    assert ("authorization", "Bearer [REDACTED]") in trace.request_headers
    assert trace.response_body is not None and "[REDACTED]" in trace.response_body
    assert result.logs[0].message == "key is [REDACTED]"


@pytest.mark.parametrize("length", ["", "1"], ids=["chunked", "content-length"])
async def test_50_mb_response_fails_the_fetch_clearly(
    pool: RuntimePool, sink: Sink, length: str
) -> None:
    code = f"""async function onTrack() {{
      try {{ await (await fetch('{sink.url}/big?length={length}')).text(); return 'read it' }}
      catch (e) {{ return [e.type, e.message] }}
    }}"""
    got = value_of(await invoke(pool, code, timeout_s=20))
    assert got == [
        "max-size",
        f"response body at {sink.url}/big?length={length} is larger than eventfn's limit of 10 MB",
    ]


async def test_fetch_outliving_the_invocation_deadline_times_out(
    pool: RuntimePool, sink: Sink
) -> None:
    code = f"async function onTrack() {{ await fetch('{sink.url}/slow?s=3'); return 'late' }}"
    started = time.monotonic()
    result = await invoke(pool, code, timeout_s=0.3)
    assert (result.outcomes[0].kind, result.outcomes[0].error_type) == ("retry", "Timeout")
    assert time.monotonic() - started < 2
    assert result.requests[0].error == f"network timeout at: {sink.url}/slow?s=3"
