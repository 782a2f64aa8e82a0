"""`eventfn dead show` prints what the README promises without --json: the event, its attempts,
where it failed, and the last attempt's logs and requests."""

from __future__ import annotations

import re
from pathlib import Path

from tests.cli.conftest import Cli
from tests.pipeline.conftest import Sink
from tests.pipeline.test_parity_batching import event, post_batch
from tests.retrier.conftest import Platform, StartRetrier, platform, sink, start_retrier_on
from tests.retrier.test_replay_once import until_letters

__all__ = ["platform", "sink", "start_retrier_on"]

LOGS_THEN_THROWS = """
async function onTrack(event, settings) {
  console.log('sending', event.messageId)
  console.warn('plan is', event.properties.plan)
  await fetch(settings.endpoint + '/track?id=[1]', {method: 'POST', body: '{}'})
  await fetch('http://127.0.0.1:1/refused', {method: 'PUT', body: '{}'})
}
"""


async def test_dead_show_prints_the_last_attempts_logs_and_requests(
    cli: Cli, tmp_path: Path, platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    retrier, stub = await start_retrier_on()
    iid = await platform.instance(LOGS_THEN_THROWS, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    await post_batch(platform, [event("track", "shown-1", plan="gold")])
    (letter,) = await until_letters(stub, platform.owner, platform.instance_name(iid), 1)
    env = {"EVENTFN_RETRIER_ADDR": f"127.0.0.1:{retrier.port}", "EVENTFN_TOKEN": platform.owner}

    shown = await cli.ok("dead", "show", letter.name, **env)

    lines = [line.strip() for line in shown.stdout.splitlines()]
    assert "logs: log: sending shown-1" in lines, shown.stdout
    assert "warn: plan is gold" in lines, shown.stdout
    assert any(
        re.fullmatch(rf"POST {re.escape(sink.url)}/track\?id=\[1\] → 200 \(\d+ ms\)", line)
        for line in lines
    ), shown.stdout
    assert any(
        line.startswith("PUT http://127.0.0.1:1/refused → ") and "200" not in line for line in lines
    ), shown.stdout
