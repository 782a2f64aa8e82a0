"""A write key alone (public in any web page): a small gzip batch whose top-level `context` is
merged into each of its events. Measured before the merge, 713 bytes on the wire stored 8.2 MB
per instance, and events over the 32 KB limit; a full 500 KB batch would have stored ≈ 1.5 GB.
"""

from __future__ import annotations

import gzip

import orjson
import pytest
from nats.aio.client import Client as NatsClient

from services.router.normalize import MERGED_BATCH_MAX_BYTES
from tests.registry.conftest import registry
from tests.router.test_service import Env, basic, env, stored

__all__ = ["env", "registry"]


@pytest.mark.parametrize(
    ("context_kb", "events", "refusal"),
    [
        (40, 200, "per-event limit"),  # each event alone over 32 KB once merged
        (16, 200, f"{MERGED_BATCH_MAX_BYTES // 1024} KB a batch may store"),  # 3.2 MB in all
    ],
    ids=["event-over-its-limit", "batch-over-what-it-may-store"],
)
async def test_a_small_request_cannot_store_its_context_once_per_event(
    env: Env, nats_client: NatsClient, context_kb: int, events: int, refusal: str
) -> None:
    batch = {
        "context": {"pad": "x" * (context_kb * 1024)},
        "batch": [{"type": "track", "userId": f"u{i}", "event": "E"} for i in range(events)],
    }
    wire = gzip.compress(orjson.dumps(batch))
    assert len(wire) < 2048
    response = await env.http.post(
        "/v1/batch",
        content=wire,
        headers={
            **basic(env.write_key),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    )
    assert response.status_code == 400, response.text
    assert refusal in response.json()["message"]
    assert await stored(nats_client, env.subject(env.other)) == []
