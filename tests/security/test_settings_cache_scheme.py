"""The browser settings name the scheme events are sent over, taken (as uvicorn reads it from a
local proxy) from `X-Forwarded-Proto`; the answer is cached 60 s by shared caches but varied on
Host alone: one request with `X-Forwarded-Proto: http` could have a cache tell https pages to
post over http (mixed content: browsers block it, the events are lost)."""

from __future__ import annotations

from tests.pipeline.conftest import Platform, platform, sink
from tests.registry.conftest import registry

__all__ = ["platform", "registry", "sink"]


async def test_an_answer_that_follows_the_forwarded_scheme_varies_on_it(
    platform: Platform,
) -> None:
    path = f"/v1/projects/{platform.write_key}/settings"
    asked = {"host": "track.example.com"}
    plain = await platform.http.get(path, headers=asked)
    forwarded = await platform.http.get(path, headers={**asked, "x-forwarded-proto": "https"})
    schemes = {
        answer.json()["integrations"]["Segment.io"]["protocol"] for answer in (plain, forwarded)
    }
    assert schemes == {"http", "https"}  # what makes the header matter to caches
    for answer in (plain, forwarded):
        varied = {v.strip().lower() for v in answer.headers.get("vary", "").split(",")}
        assert {"host", "x-forwarded-proto"} <= varied, answer.headers.get("vary")
