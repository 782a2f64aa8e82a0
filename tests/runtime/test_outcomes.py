"""Outcome classification (pure, property-tested) and onBatch results in a real isolate."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.runtime import OutcomeKind, RuntimePool
from services.runtime.outcomes import (
    INVALID_BATCH_RESULT,
    classify_batch,
    classify_error,
    classify_single,
    status_outcome,
)
from tests.runtime.conftest import invoke

statuses = st.integers(min_value=100, max_value=599)


@given(statuses)
def test_status_outcome_follows_the_reference_table(status: int) -> None:
    kind = status_outcome(status, "m").kind
    if 200 <= status < 300:
        assert kind == OutcomeKind.DELIVERED
    elif status == 429 or status >= 500:
        assert kind == OutcomeKind.RETRY
    elif 400 <= status < 500:
        assert kind == OutcomeKind.DISCARD
    else:
        assert kind == OutcomeKind.FAILURE


@given(st.lists(statuses, min_size=1, max_size=50))
def test_status_array_gives_one_outcome_per_event_in_order(codes: list[int]) -> None:
    value = [{"status": c, "errormessage": f"e{i}"} for i, c in enumerate(codes)]
    outcomes = classify_batch(len(codes), 0, value, 5.0)
    assert [o.kind for o in outcomes] == [status_outcome(c, None).kind for c in codes]


@given(st.integers(min_value=1, max_value=30), st.integers(min_value=1, max_value=30))
def test_status_array_of_wrong_length_fails_the_whole_batch(count: int, returned: int) -> None:
    value = [{"status": 200}] * returned
    outcomes = classify_batch(count, 0, value, 5.0)
    assert len(outcomes) == count
    if returned != count:
        assert {(o.kind, o.error_type) for o in outcomes} == {
            (OutcomeKind.FAILURE, INVALID_BATCH_RESULT)
        }


@given(st.lists(st.one_of(st.integers(), st.text(), st.booleans()), min_size=1, max_size=5))
def test_status_array_of_non_objects_fails_the_whole_batch(value: list[object]) -> None:
    outcomes = classify_batch(len(value), 0, value, 5.0)
    assert {o.error_type for o in outcomes} == {INVALID_BATCH_RESULT}


@given(st.integers(min_value=1, max_value=20), st.sampled_from([None, 1, "x", {"a": 1}]))
def test_no_status_array_means_all_delivered(count: int, value: object) -> None:
    assert {o.kind for o in classify_batch(count, 0, value, 5.0)} == {OutcomeKind.DELIVERED}
    # e.g. `return Promise.all(subBatches)` of void handlers, as in the reference
    assert {o.kind for o in classify_batch(count, 0, [None, None], 5.0)} == {OutcomeKind.DELIVERED}


@given(
    st.sampled_from(
        ["RetryError", "EventNotSupported", "InvalidEventPayload", "ValidationError", None]
    ),
    st.text(max_size=20),
    st.integers(1, 20),
)
def test_thrown_error_applies_to_the_whole_batch(cls: str | None, msg: str, count: int) -> None:
    err = {"name": cls or "TypeError", "message": msg, "stack": "", "cls": cls}
    outcomes = classify_batch(count, err, None, 5.0)
    assert outcomes == [classify_error(err)] * count


def test_classify_single() -> None:
    assert classify_single(0, 1.0).kind == OutcomeKind.DELIVERED
    timeout = classify_single(2, 1.5)
    assert (timeout.kind, timeout.error_type) == (OutcomeKind.RETRY, "Timeout")
    err = {
        "name": "Error",
        "message": "x",
        "stack": "Error: x\n at a (eventfn-runtime.js:1:2)",
        "cls": None,
    }
    assert classify_single(err, 1.0).stack == "Error: x"


async def test_on_batch_status_array_in_isolate(pool: RuntimePool) -> None:
    code = """async function onBatch(events) {
      return events.map(e => ({status: e.s, errormessage: e.s === 200 ? undefined : 'no'}))
    }"""
    events = [{"type": "track", "s": s} for s in (200, 400, 200, 500, 429)]
    result = await invoke(pool, code, events, batch=True)
    assert [o.kind for o in result.outcomes] == [
        OutcomeKind.DELIVERED,
        OutcomeKind.DISCARD,
        OutcomeKind.DELIVERED,
        OutcomeKind.RETRY,
        OutcomeKind.RETRY,
    ]
    assert result.outcomes[1].message == "no"


async def test_on_batch_thrown_error_applies_to_all(pool: RuntimePool) -> None:
    code = "async function onBatch(events) { throw new RetryError('later') }"
    result = await invoke(pool, code, [{"type": "track"}] * 3, batch=True)
    assert [(o.kind, o.message) for o in result.outcomes] == [(OutcomeKind.RETRY, "later")] * 3


async def test_on_batch_wrong_length_fails_clearly(pool: RuntimePool) -> None:
    code = "async function onBatch(events) { return [{status: 200}] }"
    result = await invoke(pool, code, [{"type": "track"}] * 2, batch=True)
    assert {o.error_type for o in result.outcomes} == {INVALID_BATCH_RESULT}
    assert "returned 1 statuses for 2 events" in (result.outcomes[0].message or "")


async def test_on_batch_reference_grouping_example(pool: RuntimePool) -> None:
    code = """async function onBatch(events, settings) {
      const eventsByType = {}
      for (const event of events) {
        if (!(event.type in eventsByType)) eventsByType[event.type] = []
        eventsByType[event.type].push(event)
      }
      const promises = Object.entries(eventsByType).map(([type, events]) => {
        switch (type) {
        case 'track': return onTrackBatch(events, settings)
        case 'identify': return onIdentifyBatch(events, settings)
        }
      })
      return Promise.all(promises)
    }
    async function onTrackBatch(events) { console.log('tracks', events.length) }
    async function onIdentifyBatch(events) { console.log('identifies', events.length) }"""
    events = [{"type": "identify"}, {"type": "track"}, {"type": "track"}]
    result = await invoke(pool, code, events, batch=True)
    assert {o.kind for o in result.outcomes} == {OutcomeKind.DELIVERED}
    assert len(result.outcomes) == 3
    assert [x.message for x in result.logs] == ["identifies 1", "tracks 2"]
