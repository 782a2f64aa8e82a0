"""Each bad input named in issue 4, run in a real isolate."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
import pytest
import pytest_asyncio

from services.runtime import (
    EgressConfig,
    InvalidInvocation,
    Invocation,
    OutcomeKind,
    RuntimeConfig,
    RuntimePool,
)
from services.runtime.settings_schema import check_settings
from tests.runtime.conftest import Sink, invoke, new_key, value_of


@pytest_asyncio.fixture(scope="module")
async def strict_pool() -> AsyncIterator[RuntimePool]:
    """A pool with the default egress policy: no allowlist at all."""
    async with RuntimePool(RuntimeConfig(workers=1, egress=EgressConfig())) as p:
        yield p


async def test_syntax_error_fails_every_event_with_location(pool: RuntimePool) -> None:
    result = await invoke(pool, "async function onTrack(event {\n}", [{"type": "track"}] * 2)
    assert [o.kind for o in result.outcomes] == [OutcomeKind.FAILURE] * 2
    assert result.outcomes[0].error_type == "SyntaxError"
    assert "function.js:1:" in (result.outcomes[0].message or "")


async def test_no_handlers_at_all_is_event_not_supported(pool: RuntimePool) -> None:
    result = await invoke(pool, "const x = 1", [{"type": "track"}, {"type": "identify"}])
    assert {(o.kind, o.error_type) for o in result.outcomes} == {
        (OutcomeKind.DISCARD, "EventNotSupported")
    }


@pytest.mark.parametrize(
    ("thrown", "message"),
    [
        ("'plain string'", "plain string"),
        ("{code: 42}", '{"code":42}'),
        ("undefined", "undefined"),
        ("42", "42"),
    ],
)
async def test_throwing_a_non_error_is_a_failure_with_its_message(
    pool: RuntimePool, thrown: str, message: str
) -> None:
    result = await invoke(pool, f"async function onTrack() {{ throw {thrown} }}")
    outcome = result.outcomes[0]
    assert (outcome.kind, outcome.error_type, outcome.message) == (
        OutcomeKind.FAILURE,
        "Error",
        message,
    )


async def test_each_error_class_maps_to_its_outcome(pool: RuntimePool) -> None:
    code = """async function onTrack(e) {
      const C = {retry: RetryError, ens: EventNotSupported, iep: InvalidEventPayload,
                 val: ValidationError, type: TypeError}[e.event];
      throw new C('because ' + e.event)
    }"""
    events = [{"type": "track", "event": e} for e in ("retry", "ens", "iep", "val", "type")]
    result = await invoke(pool, code, events)
    assert [(o.kind, o.error_type, o.message) for o in result.outcomes] == [
        (OutcomeKind.RETRY, "RetryError", "because retry"),
        (OutcomeKind.DISCARD, "EventNotSupported", "because ens"),
        (OutcomeKind.DISCARD, "InvalidEventPayload", "because iep"),
        (OutcomeKind.DISCARD, "ValidationError", "because val"),
        (OutcomeKind.FAILURE, "TypeError", "because type"),
    ]
    assert "at onTrack (function.js:4:" in (result.outcomes[4].stack or "")


async def test_infinite_loop_times_out(own_pool: RuntimePool) -> None:
    started = time.monotonic()
    result = await invoke(own_pool, "function onTrack() { while (true) {} }", timeout_s=0.5)
    assert (result.outcomes[0].kind, result.outcomes[0].error_type) == (
        OutcomeKind.RETRY,
        "Timeout",
    )
    assert time.monotonic() - started < 3
    # The pool replaced the killed worker and keeps working.
    assert value_of(await invoke(own_pool, "function onTrack() { return 'ok' }")) == "ok"


async def test_timeout_is_narrowed_to_the_offending_event(own_pool: RuntimePool) -> None:
    code = "function onTrack(e) { if (e.event === 'bad') while (true) {} return e.event }"
    events = [{"type": "track", "event": e} for e in ("a", "b", "bad", "c")]
    result = await invoke(own_pool, code, events, timeout_s=0.5)
    assert [o.kind for o in result.outcomes] == [
        OutcomeKind.DELIVERED,
        OutcomeKind.DELIVERED,
        OutcomeKind.RETRY,
        OutcomeKind.DELIVERED,
    ]
    assert result.outcomes[2].error_type == "Timeout"


async def test_memory_bomb_fails_and_pool_survives(own_pool: RuntimePool) -> None:
    code = """function onTrack() {
      const a = []; while (true) a.push(new Array(100000).fill(Math.random()))
    }"""
    started = time.monotonic()
    result = await invoke(own_pool, code, timeout_s=30)
    assert (result.outcomes[0].kind, result.outcomes[0].error_type) == (
        OutcomeKind.FAILURE,
        "MemoryLimitExceeded",
    )
    assert time.monotonic() - started < 10
    assert value_of(await invoke(own_pool, "function onTrack() { return 'alive' }")) == "alive"


async def test_promise_that_never_resolves_times_out_without_killing(
    own_pool: RuntimePool,
) -> None:
    code = """async function onTrack(e) {
      if (e.event === 'hang') await new Promise(() => {}); return 'done'
    }"""
    events = [{"type": "track", "event": "hang"}, {"type": "track", "event": "fine"}]
    result = await invoke(own_pool, code, events, timeout_s=0.3)
    assert [(o.kind, o.error_type) for o in result.outcomes] == [
        (OutcomeKind.RETRY, "Timeout"),
        (OutcomeKind.DELIVERED, None),
    ]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/", "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data"]
)
async def test_fetch_to_forbidden_address_is_refused(strict_pool: RuntimePool, url: str) -> None:
    code = f"""async function onTrack() {{
      try {{ await fetch('{url}'); return 'reached' }} catch (e) {{ return [e.code, e.message] }}
    }}"""
    code_, message = value_of(await invoke(strict_pool, code))  # type: ignore[misc]
    assert code_ == "EGRESS_REFUSED"
    assert "eventfn refuses it" in message


async def test_names_are_checked_after_resolution(strict_pool: RuntimePool, sink: Sink) -> None:
    url = sink.url.replace("127.0.0.1", "localhost")
    code = f"""async function onTrack() {{
      try {{ await fetch('{url}/json'); return 'reached' }} catch (e) {{ return e.code }}
    }}"""
    assert value_of(await invoke(strict_pool, code)) == "EGRESS_REFUSED"
    assert not any(r["path"] == "/json" and "localhost" in str(r["headers"]) for r in sink.received)


@pytest.mark.parametrize("target", ["http://10.0.0.1/x", "http://127.0.0.2:9/x"])
async def test_redirect_to_private_address_is_refused(
    pool: RuntimePool, sink: Sink, target: str
) -> None:
    code = f"""async function onTrack() {{
      try {{ await fetch('{sink.url}/redirect?to={target}'); return 'followed' }}
      catch (e) {{ return e.code }}
    }}"""
    assert value_of(await invoke(pool, code)) == "EGRESS_REFUSED"


async def test_10k_console_lines_are_capped(pool: RuntimePool) -> None:
    code = "function onTrack() { for (let i = 0; i < 10000; i++) console.log('line', i) }"
    result = await invoke(pool, code)
    assert result.outcomes[0].kind == OutcomeKind.DELIVERED
    assert result.logs_truncated
    assert sum(len(x.message) + 1 for x in result.logs) <= pool.config.log_cap_bytes + 16
    assert result.logs[0].message == "line 0"


async def test_one_megabyte_event_arrives_whole(pool: RuntimePool) -> None:
    event = {"type": "track", "properties": {"blob": "x" * (1024 * 1024)}}
    code = "function onTrack(e) { return e.properties.blob.length }"
    assert value_of(await invoke(pool, code, [event])) == 1024 * 1024


async def test_settings_missing_a_required_value_are_invalid() -> None:
    schema = [
        {"name": "apiKey", "type": "string", "required": True},
        {"name": "region", "type": "string", "required": False},
    ]
    assert check_settings(schema, {"region": "eu"}) == [
        "settings.apiKey: the required setting 'apiKey' is missing"
    ]
    assert check_settings(schema, {"apiKey": "k"}) == []


async def test_events_not_a_json_array_of_objects(pool: RuntimePool) -> None:
    result = await pool.run(
        Invocation(new_key(), "function onTrack() {}", orjson.dumps([1, "x"]), {}, False)
    )
    assert {(o.kind, o.error_type) for o in result.outcomes} == {
        (OutcomeKind.DISCARD, "InvalidEventPayload")
    }


async def test_timers_do_not_outlive_their_invocation(pool: RuntimePool) -> None:
    code = """let fired = 0
    async function onTrack(e) {
      if (e.event === 'arm') { setTimeout(() => { fired += 1 }, 1); return 'armed' }
      await new Promise(ok => setTimeout(ok, 30));
      return fired
    }"""
    key = new_key()
    assert value_of(await invoke(pool, code, [{"type": "track", "event": "arm"}], key=key)) == (
        "armed"
    )
    assert value_of(await invoke(pool, code, [{"type": "track", "event": "check"}], key=key)) == 0


async def test_timeout_out_of_range_is_rejected(pool: RuntimePool) -> None:
    with pytest.raises(InvalidInvocation, match="timeout_s"):
        await invoke(pool, "function onTrack() {}", timeout_s=61)


async def test_handlers_lists_defined_handlers(pool: RuntimePool) -> None:
    code = "async function onTrack() {}\nconst onBatch = async () => {}\nfunction helper() {}"
    assert await pool.handlers(new_key(), code) == frozenset({"onTrack", "onBatch"})
    assert await pool.handlers(new_key(), "syntax error here") == frozenset()


async def test_loop_after_an_await_is_narrowed_too(own_pool: RuntimePool) -> None:
    code = """async function onTrack(e) {
      await Promise.resolve();
      if (e.event === 'bad') while (true) {}
      return e.event
    }"""
    events = [{"type": "track", "event": e} for e in ("a", "bad", "b")]
    result = await invoke(own_pool, code, events, timeout_s=0.4)
    assert [o.error_type for o in result.outcomes] == [None, "Timeout", None]


async def test_loop_while_loading_times_out_every_event_once(own_pool: RuntimePool) -> None:
    started = time.monotonic()
    result = await invoke(
        own_pool, "while (true) {}\nfunction onTrack() {}", [{"type": "track"}] * 8, timeout_s=0.4
    )
    assert [o.error_type for o in result.outcomes] == ["Timeout"] * 8
    assert time.monotonic() - started < 2.5  # not one timeout per event
