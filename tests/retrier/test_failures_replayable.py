"""Issue 11: an event that failed with an ordinary error (a TypeError, an invalid onBatch
result) is kept as a dead letter with its reason and the error's line and column, and a fixed
function replays it; discards by design stay out of DEAD."""

from __future__ import annotations

import asyncio
import re

import typer
from nats.aio.client import Client as NatsClient
from typer.testing import CliRunner

from eventfn_api.registry.v1 import registry_pb2 as rpb
from eventfn_api.retrier.v1 import retrier_pb2 as pb
from eventfn_api.type.v1 import types_pb2
from services.cli.dead_commands import dead
from services.cli.deliveries_commands import deliveries
from tests.eventually import eventually
from tests.pipeline.conftest import Platform, Sink
from tests.pipeline.test_parity_batching import all_packs_settled, counters, event, post_batch
from tests.registry.conftest import auth
from tests.retrier.conftest import StartRetrier
from tests.retrier.test_replay_once import dead_letters, replay, settled, until_letters

BROKEN = """
async function onTrack(event, settings) {
  const plan = event.properties.plan.name
  await fetch(settings.endpoint + '/track', {method: 'POST', body: JSON.stringify({plan})})
}
"""
FIXED = """
async function onTrack(event, settings) {
  const plan = (event.properties.plan || {}).name || 'free'
  await fetch(settings.endpoint + '/fixed', {method: 'POST', body: JSON.stringify(event)})
}
"""
WRONG_BATCH_RESULT = """
async function onBatch(events, settings) {
  await fetch(settings.endpoint + '/batch', {method: 'POST', body: JSON.stringify(events)})
  return [{status: 200}]
}
"""
REJECTS = """
async function onTrack(event) { throw new ValidationError('no plan') }
"""
WHERE = re.compile(r"function\.js:3:\d+")


async def save_and_deploy(platform: Platform, instance_id: str, code: str) -> str:
    """Save a new version of the instance's function and deploy it to the instance."""
    stub, owner = platform.registry.stub, auth(platform.owner)
    name = platform.instance_name(instance_id)
    ins = await stub.GetInstance(rpb.GetInstanceRequest(name=name), metadata=owner)
    fn = await stub.GetFunction(rpb.GetFunctionRequest(name=ins.instance.function), metadata=owner)
    saved = await stub.SaveFunction(
        rpb.SaveFunctionRequest(
            name=fn.function.name,
            code=code,
            settings=fn.latest_version.settings,
            deploy_instances=[name],
        ),
        metadata=owner,
    )
    version_id = saved.version.name.rsplit("/", 1)[-1]
    await platform.executor.watcher.wait_until(
        lambda v: v.instances[instance_id].version_id == version_id
    )
    return saved.version.name


async def test_a_fixed_function_replays_a_failed_event(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    retrier, stub = await start_retrier_on()
    iid = await platform.instance(BROKEN, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    await post_batch(platform, [event("track", "typeerror-1")])
    (letter,) = await until_letters(stub, platform.owner, platform.instance_name(iid), 1)
    assert letter.message_id == "typeerror-1"
    assert letter.reason.startswith("failed on attempt 1 at function.js:3:"), letter.reason
    assert "TypeError: Cannot read properties of undefined (reading 'name')" in letter.reason
    shown = (
        await stub.GetDeadLetter(
            pb.GetDeadLetterRequest(name=letter.name), metadata=auth(platform.owner)
        )
    ).dead_letter
    (attempt,) = shown.attempts
    assert re.fullmatch("[0-9a-f]{32}", shown.trace_id), "a dead letter names its journey"
    assert attempt.outcome == types_pb2.OUTCOME_FAILED
    assert attempt.error.type == "TypeError"
    assert WHERE.search(attempt.error.stack), attempt.error.stack
    got = await counters(platform, iid, lambda c: c["failed"] == 1)
    assert got["retried"] == 0, "an ordinary error is not retried"
    assert sink.bodies == []

    await save_and_deploy(platform, iid, FIXED)
    assert (
        await replay(stub, platform.owner, platform.instance_name(iid)) == 1
    )  # runs the deployed (fixed) version
    await settled(sink, 1)
    assert sink.paths == ["/fixed"] and sink.bodies[0]["messageId"] == "typeerror-1"
    assert await dead_letters(stub, platform.owner, platform.instance_name(iid)) == []


async def test_the_cli_shows_the_line_and_column_of_a_failure(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    retrier, stub = await start_retrier_on()
    iid = await platform.instance(BROKEN, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    await post_batch(platform, [event("track", "typeerror-cli")])
    (letter,) = await until_letters(stub, platform.owner, platform.instance_name(iid), 1)
    await counters(platform, iid, lambda c: c["failed"] == 1)
    env = {
        "EVENTFN_RETRIER_ADDR": f"127.0.0.1:{retrier.port}",
        "EVENTFN_REGISTRY_ADDR": f"127.0.0.1:{platform.registry.port}",
        "EVENTFN_EXECUTOR_ADDR": f"127.0.0.1:{platform.executor.port}",
        "EVENTFN_TOKEN": platform.owner,
    }
    app = typer.Typer()
    app.command()(deliveries)
    runner = CliRunner()

    def cli(command: typer.Typer, *args: str) -> str:
        result = runner.invoke(command, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    # The CLI's stubs are blocking: run them off the event loop the servers live on.
    text = await eventually(  # failure samples are flushed every 0.2 s
        lambda: asyncio.to_thread(cli, app, iid, "--failures"),
        "the failure listed by the CLI",
        until=lambda text: "typeerror-cli" in text,
    )
    assert "TypeError" in text and WHERE.search(text), text
    assert f"eventfn dead replay {iid}" in text
    shown = await asyncio.to_thread(cli, dead, "show", letter.name)
    assert re.search(r"^at function\.js:3:\d+$", shown, re.MULTILINE), shown
    assert "failed on attempt 1" in shown


async def test_an_invalid_batch_result_is_a_dead_letter(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    retrier, stub = await start_retrier_on()
    iid = await platform.instance(WRONG_BATCH_RESULT, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    await post_batch(platform, [event("track", "bad-result-0"), event("page", "bad-result-1")])
    letters = await until_letters(stub, platform.owner, platform.instance_name(iid), 2)
    assert {d.message_id for d in letters} == {"bad-result-0", "bad-result-1"}
    assert all("InvalidBatchResult" in d.reason for d in letters)


async def test_a_discard_by_design_is_not_a_dead_letter(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier, nats_client: NatsClient
) -> None:
    retrier, stub = await start_retrier_on()
    iid = await platform.instance(REJECTS, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    await post_batch(platform, [event("track", "rejected"), event("group", "unsupported")])
    await counters(platform, iid, lambda c: c["discarded"] == 2)
    # A pack is acked after its events' hand-offs: had they gone to DEAD, they'd be there.
    await all_packs_settled(nats_client)
    assert await dead_letters(stub, platform.owner, platform.instance_name(iid)) == []
