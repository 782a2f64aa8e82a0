"""NUL (U+0000) is a valid character of JSON strings and JavaScript source, and PostgreSQL
stores it in no text or jsonb value. A function logging or throwing one (or an event field
holding one, which any sender of a source's write key controls) stopped the executor writing
delivery records for every tenant: the flush failed on it and kept the whole batch for the
next flush, which failed again. (The registry refuses it in what it is given:
`test_control_plane_request_text.py`.)"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from services.common.deliveries.recorder import DeliveryRecorder, FailureSample
from tests.registry.conftest import Registry, registry

__all__ = ["registry"]

NUL = "\x00"


def sample(instance_id: str, text: str) -> FailureSample:
    return FailureSample(
        instance_id=instance_id,
        time=datetime.now(UTC),
        message_id=f"m{text}",
        version_id="ver_1",
        outcome="discard",
        error_type="ValidationError",
        error_message=f"bad{text}message",
        error_stack=f"ValidationError: bad{text}message",
        event='{"type":"track"}',
        logs=f"[log] evil{text}nul",
        requests=[{"url": f"http://x/{text}", "body": f"b{text}"}],
    )


async def test_a_nul_in_one_tenants_failure_keeps_no_ones_records_back(
    registry: Registry,
) -> None:
    recorder = DeliveryRecorder(registry.database_url, flush_seconds=3600, samples_per_minute=10)
    await recorder.start()
    try:
        recorder.sample(sample("ins_attacker", NUL))
        recorder.sample(sample("ins_victim", " "))
        await recorder.flush()
        recorder.sample(sample("ins_victim", "  "))  # the next flush is not held back either
        await recorder.flush()
    finally:
        await recorder.close()
    conn = await asyncpg.connect(registry.database_url)
    try:
        rows = await conn.fetch(
            "SELECT instance_id, error_message, logs, requests FROM delivery_failure ORDER BY id"
        )
    finally:
        await conn.close()
    assert [r["instance_id"] for r in rows] == ["ins_attacker", "ins_victim", "ins_victim"]
    assert rows[0]["error_message"] == "bad\ufffdmessage"
    assert rows[0]["logs"] == "[log] evil\ufffdnul"
    assert "b\\ufffd" in rows[0]["requests"] or "b\ufffd" in rows[0]["requests"]


@pytest.mark.parametrize(
    "bad",
    [{"invocation_events": 2**40}, {"requests": [{"body": object()}]}],
    ids=["out-of-range", "not-json"],
)
async def test_a_sample_that_cannot_be_written_is_dropped_and_the_counts_are_kept(
    registry: Registry, bad: dict[str, Any]
) -> None:
    """Defence in depth: whatever value PostgreSQL (or its encoder here) still refuses, it is
    refused at every flush; the samples of that flush go, the counts stay and later records
    are written."""
    recorder = DeliveryRecorder(registry.database_url, flush_seconds=3600, samples_per_minute=10)
    await recorder.start()
    try:
        recorder.count("ins_victim", "ws_1", "fn_1", {"delivered": 3})
        recorder.sample(replace(sample("ins_attacker", " "), **bad))
        await recorder.flush()
        recorder.sample(sample("ins_victim", " "))
        await recorder.flush()
    finally:
        await recorder.close()
    conn = await asyncpg.connect(registry.database_url)
    try:
        failures = await conn.fetch("SELECT instance_id FROM delivery_failure")
        delivered = await conn.fetchval("SELECT sum(delivered) FROM delivery_minute")
    finally:
        await conn.close()
    assert [r["instance_id"] for r in failures] == ["ins_victim"]
    assert delivered == 3
