"""A fetch URL Python cannot read: a port past 65535 (the runtime's fast URL path lets it
through, and an event can name the URL a forwarding function fetches), or a host holding an
encrypted setting, which redaction brackets (`[REDACTED].example`, read as a bad IPv6
literal). The executor's bookkeeping after the invocation (the fetch's span and metric) raised
on it, the pack was handed back and the function ran again, for ever: every request it sent
repeated, no outcome recorded. The URL is now reported as unreadable, and no fault of the
bookkeeping keeps an invocation's events from being settled."""

from __future__ import annotations

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.executor.observe import endpoint
from tests.eventually import eventually
from tests.pipeline.conftest import Platform, Sink, platform, sink
from tests.pipeline.test_delivery import batch_body, send
from tests.registry.conftest import registry

__all__ = ["platform", "registry", "sink"]

SECRET = "shop42acme"
# The account's subdomain is an encrypted setting: an ordinary template shape.
SUBDOMAIN = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint + '/hit', {method: 'POST', body: JSON.stringify(event)})
  await fetch(`http://${settings.apiKey}.invalid/api`).catch(() => {})
}
"""
# A forwarder: the event names the URL (anyone with the public write key sends events).
FORWARDER = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint + '/hit', {method: 'POST', body: JSON.stringify(event)})
  await fetch(event.properties.url).catch(() => {})
}
"""


@pytest.mark.parametrize("case", ["secret-in-host", "port-from-event"])
async def test_an_unreadable_fetch_url_settles_its_event_once(
    platform: Platform, sink: Sink, case: str
) -> None:
    body = batch_body(1)
    if case == "secret-in-host":
        iid = await platform.instance(SUBDOMAIN, sink.url, secret=SECRET)
    else:
        iid = await platform.instance(FORWARDER, sink.url)
        body["batch"][0]["properties"] = {"url": "http://example.com:99999/x"}
    await send(platform, body)
    conn = await asyncpg.connect(platform.registry.database_url)
    try:
        await eventually(
            lambda: conn.fetchval(
                "SELECT sum(delivered) FROM delivery_minute WHERE instance_id = $1", iid
            ),
            "the event's outcome recorded",
            until=lambda delivered: delivered == 1,
        )
    finally:
        await conn.close()
    assert [p for p in sink.paths if p == "/hit"] == ["/hit"]


@given(st.text())
def test_endpoint_reads_any_text(url: str) -> None:
    full, host, port = endpoint("http://" + url)
    assert "/" not in host
    assert port is None or 0 <= port <= 65535
    assert "?" not in full and "#" not in full
