"""A website source: a page on another origin loads Segment's browser library
(`@segment/analytics-next` from npm) pointed at the router, and its page, track and identify
calls reach a destination function, which posts them to a local sink."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from tests.browser.conftest import BrowserRun, PageServer, open_page
from tests.pipeline.conftest import Platform, Sink

pytestmark = pytest.mark.usefixtures("browser_tools")

FUNCTION = """
async function post(event, settings) {
  const res = await fetch(settings.endpoint + '/' + event.type, {
    method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(event)
  })
  if (!res.ok) throw new RetryError('sink answered ' + res.status)
}
async function onPage(event, settings) { await post(event, settings) }
async function onTrack(event, settings) { await post(event, settings) }
async function onIdentify(event, settings) { await post(event, settings) }
"""

# The page loads the library, makes its three calls and reports their messageIds (or why
# it could not) in `window.__result`, which the driver waits for.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Shop</title><link rel="icon" href="data:,">
<script src="/analytics-next.js"></script></head>
<body><script>
const config = %s;
(async () => {
  try {
    const segment = {};
    if (config.apiHost) Object.assign(segment, {apiHost: config.apiHost, protocol: 'http'});
    if (config.batching) {
      segment.deliveryStrategy = {strategy: 'batching', config: {size: 3, timeout: 1000}};
    }
    const analytics = AnalyticsNext.AnalyticsBrowser.load(
      {writeKey: config.writeKey, cdnURL: config.cdnURL},
      {integrations: {'Segment.io': segment}, disableClientPersistence: true},
    );
    // load() rejects when the settings cannot be fetched; the calls would then never settle.
    analytics.catch((error) => { window.__result = {error: 'load failed: ' + error}; });
    const contexts = [
      await analytics.page('Docs', 'Pricing', {plan: 'pro'}),
      await analytics.track('Order Completed', {total: 120, currency: 'EUR'}),
      await analytics.identify('u-browser', {email: 'ada@example.com'}),
    ];
    window.__result = {
      messageIds: contexts.map((ctx) => ctx.event.messageId),
      failed: contexts.map((ctx) => ctx.failedDelivery()?.reason?.toString() ?? null),
    };
  } catch (error) {
    window.__result = {error: String(error && error.stack || error)};
  }
})();
</script></body></html>
"""


def page(platform: Platform, *, api_host: bool, batching: bool) -> str:
    """Return a test page's HTML, the library pointed at the router."""
    router = f"127.0.0.1:{platform.router.http_port}"
    config = {
        "writeKey": platform.write_key,
        "cdnURL": f"http://{router}",
        "apiHost": f"{router}/v1" if api_host else None,
        "batching": batching,
    }
    return PAGE % orjson.dumps(config).decode()


def check_run(run: BrowserRun, platform: Platform, pages: PageServer, paths: set[str]) -> None:
    """Assert the page sent its three events to the router, and contacted nothing else."""
    assert not run.errors, run.explain()
    assert run.result and "error" not in run.result, run.explain()
    assert run.result["failed"] == [None, None, None], run.explain()
    assert not [line for line in run.console if line.startswith("error")], run.explain()
    router = f"http://127.0.0.1:{platform.router.http_port}"
    for request in run.requests:
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(request["url"]))
        assert origin in (pages.origin, router), f"unexpected request to {request['url']}"
        assert request.get("status") in (200, 304), run.explain()
    sent = {urlsplit(r["url"]).path for r in run.requests if r["method"] == "POST"}
    assert sent == paths, run.explain()
    settings = [r for r in run.requests if r["url"].endswith("/settings")]
    assert settings and urlsplit(settings[0]["url"]).path == (
        f"/v1/projects/{platform.write_key}/settings"
    )


async def test_page_track_identify_reach_a_function_and_the_sink(
    platform: Platform,
    sink: Sink,
    page_server: PageServer,
    browser_tools: tuple[str, Path],
) -> None:
    await platform.instance(FUNCTION, sink.url)
    # One POST per call, to the short paths, with cdnURL and apiHost pointed at the router.
    page_server.pages["single.html"] = page(platform, api_host=True, batching=False)
    single = await open_page(browser_tools, page_server.url("single.html"))
    check_run(single, platform, page_server, {"/v1/p", "/v1/t", "/v1/i"})
    # Batching, and only cdnURL set: the settings the router serves say where to send.
    page_server.pages["batched.html"] = page(platform, api_host=False, batching=True)
    batched = await open_page(browser_tools, page_server.url("batched.html"))
    check_run(batched, platform, page_server, {"/v1/b"})

    expected = single.result["messageIds"] + batched.result["messageIds"]
    events = await sink.wait_for(len(expected))
    by_id = {event["messageId"]: event for event in events}
    assert set(by_id) == set(expected)
    for run in (single, batched):
        page_id, track_id, identify_id = run.result["messageIds"]
        viewed, ordered, identified = by_id[page_id], by_id[track_id], by_id[identify_id]
        assert viewed["type"] == "page" and viewed["name"] == "Pricing"
        assert viewed["properties"]["plan"] == "pro" and viewed["category"] == "Docs"
        assert ordered["type"] == "track" and ordered["event"] == "Order Completed"
        assert ordered["properties"] == {"total": 120, "currency": "EUR"}
        assert identified["type"] == "identify" and identified["userId"] == "u-browser"
        assert identified["traits"]["email"] == "ada@example.com"
        for event in (viewed, ordered, identified):
            assert event["context"]["library"]["name"] == "analytics.js"
            assert event["context"]["page"]["url"].startswith(page_server.origin)
            assert event["anonymousId"] and event["receivedAt"] and event["timestamp"]
            assert "writeKey" not in event
    paths = sorted(sink.paths)
    assert paths == ["/identify"] * 2 + ["/page"] * 2 + ["/track"] * 2
