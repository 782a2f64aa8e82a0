"""Preview: fresh context, capped logs, request traces, redaction; and `eventfn preview`."""

from __future__ import annotations

from pathlib import Path

import orjson
import typer
from typer.testing import CliRunner

from services.cli.preview import preview
from services.runtime import OutcomeKind, RuntimePool
from services.runtime.preview import SAMPLE_TYPES, preview_in_process, run_preview, sample_event
from tests.eventually import eventually
from tests.runtime.conftest import Sink


async def test_preview_returns_result_logs_and_requests(pool: RuntimePool, sink: Sink) -> None:
    code = f"""async function onIdentify(event, settings) {{
      console.log('key', settings.apiKey);
      const r = await fetch('{sink.url}/json', {{headers: {{'X-Api-Key': settings.apiKey}}}});
      return {{status: r.status, user: event.userId}}
    }}"""
    result = await run_preview(
        pool, code, sample_event("identify"), {"apiKey": "abcd-1234"}, secrets=("abcd-1234",)
    )
    assert result.outcome == OutcomeKind.DELIVERED
    assert result.result == {"status": 200, "user": "019mr8mf4r"}
    assert [x.message for x in result.logs] == ["key [REDACTED]"]
    (trace,) = result.requests
    assert trace.status == 200 and trace.response_body == '{"ok": true, "n": 1}'
    assert ("x-api-key", "[REDACTED]") in trace.request_headers


async def test_preview_uses_a_fresh_context_each_time(pool: RuntimePool) -> None:
    code = """let runs = 0
    async function onTrack() { runs += 1; return [runs, await cache.load('k', -1, () => runs)] }"""
    first = await run_preview(pool, code, sample_event("track"), {})
    second = await run_preview(pool, code, sample_event("track"), {})
    assert first.result == second.result == [1, 1]


async def test_preview_caps_console_output_at_4_kb(pool: RuntimePool) -> None:
    code = "function onTrack() { for (let i = 0; i < 10000; i++) console.log('x'.repeat(50)) }"
    result = await run_preview(pool, code, sample_event("track"), {})
    assert result.logs_truncated
    assert sum(len(x.message) + 1 for x in result.logs) <= 4 * 1024 + 1


async def test_preview_array_calls_on_batch_and_reports_error(pool: RuntimePool) -> None:
    code = "async function onBatch(events) { throw new ValidationError(events.length + ' events') }"
    payload = orjson.dumps([orjson.loads(sample_event(t)) for t in ("track", "page")])
    result = await run_preview(pool, code, payload, {})
    assert result.outcome == OutcomeKind.DISCARD
    assert result.error is not None
    assert (result.error.type, result.error.message) == ("ValidationError", "2 events")


async def test_preview_checks_settings_against_schema(pool: RuntimePool) -> None:
    schema = [{"name": "apiKey", "type": "string", "required": True}]
    result = await run_preview(
        pool, "function onTrack() {}", sample_event("track"), {}, schema=schema
    )
    assert result.outcome == OutcomeKind.DISCARD
    assert result.error is not None and result.error.type == "InvalidSettings"


def test_samples_exist_for_every_type() -> None:
    for event_type in SAMPLE_TYPES:
        assert orjson.loads(sample_event(event_type))["type"] == event_type


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(preview)
    return app


def test_cli_preview_prints_result_logs_and_requests(tmp_path: Path) -> None:
    handler = tmp_path / "fn.js"
    handler.write_text(
        "async function onTrack(event, settings) {\n"
        "  console.log('hello', event.event)\n"
        "  return {ok: true, key: settings.k}\n}\n"
    )
    settings = tmp_path / "s.json"
    settings.write_text('{"k": "v"}')
    run = CliRunner().invoke(_cli(), [str(handler), "--settings", str(settings)])
    assert run.exit_code == 0, run.output
    assert "delivered" in run.output and "hello Song Played" in run.output
    as_json = CliRunner().invoke(_cli(), [str(handler), "--settings", str(settings), "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = orjson.loads(as_json.output)
    assert data["outcome"] == "delivered" and data["result"] == {"ok": True, "key": "v"}


def test_cli_preview_exit_code_on_failure(tmp_path: Path) -> None:
    handler = tmp_path / "fn.js"
    handler.write_text("async function onTrack() {\n  throw new Error('nope')\n}")
    event = tmp_path / "e.json"
    event.write_text('{"type": "track", "event": "x"}')
    run = CliRunner().invoke(_cli(), [str(handler), "--event", str(event)])
    assert run.exit_code == 1
    # The error once, then only the frames in the function's code (the runtime's own,
    # `at <anonymous>:1:62`, mean nothing to the function's author).
    assert run.output.count("Error: nope") == 1, run.output
    assert "at onTrack (function.js:2:" in run.output and "<anonymous>" not in run.output


def test_a_failed_fetch_names_the_line_that_made_it(tmp_path: Path) -> None:
    """A FetchError made in the host's callback had none of the function's frames on its
    stack, so it named no line of the function."""
    handler = tmp_path / "fn.js"
    handler.write_text(
        "async function onTrack() {\n  const r = await fetch('http://127.0.0.1:9/x')\n}"
    )
    run = CliRunner().invoke(_cli(), [str(handler), "--allow", "127.0.0.1/32"])
    assert run.exit_code == 1
    assert "FetchError" in run.output and "at async onTrack (function.js:2:" in run.output, (
        run.output
    )


async def test_a_preview_stopped_after_a_runaway_leaves_no_status_file() -> None:
    """A local preview of a runaway handler ends while the pool starts the killed worker's
    replacement: the replacement's status block (a file in /dev/shm) went undeleted, one more
    per preview, before the start cleaned up after itself when cancelled."""

    def blocks() -> set[str]:
        return {p.name for p in Path("/dev/shm").glob("eventfn-worker-*")}

    before = blocks()
    result = await preview_in_process(
        "async function onTrack(e) { while (true) {} }", sample_event("track"), {}, timeout_s=0.5
    )
    assert result.outcome is not OutcomeKind.DELIVERED
    # Other pools of this process may be starting workers meanwhile: their blocks go once
    # their workers are ready; a leaked one stays.
    await eventually(
        lambda: blocks() - before,
        "no status block left by the preview",
        until=lambda x: not x,
        seconds=15,
    )
