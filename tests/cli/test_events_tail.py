"""`eventfn events tail`: the caller's workspace only, with a token, read through the executor
(TailEvents); one line when the platform is down (issue 11, item 8)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import orjson
from nats.aio.client import Client as NatsClient

from services.common import streams
from tests.cli.conftest import Cli
from tests.pipeline.conftest import Platform, platform
from tests.registry.conftest import Registry, auth
from tests.registry.test_flows import make_function, new_instance, settings

__all__ = ["platform"]


async def workspace_with_instance(r: Registry, name: str) -> tuple[str, str, str]:
    """Return (workspace id, owner token, instance id) of a new workspace."""
    ws, owner = await r.workspace(name)
    fn_id, src_id = await make_function(r, owner, name)
    made = await r.stub.CreateInstance(
        new_instance(
            f"workspaces/{ws}",
            fn_id,
            src_id,
            settings=settings(endpoint="https://example.com", apiKey="k"),
        ),
        metadata=auth(owner),
    )
    return ws, owner, made.instance.name.rsplit("/", 1)[-1]


async def publish(nats: NatsClient, ws: str, ins: str, event_name: str) -> str:
    """Store one pack of one track event for an instance; return its messageId."""
    message_id = uuid.uuid4().hex
    event = {"type": "track", "event": event_name, "userId": "u1", "messageId": message_id}
    await nats.jetstream().publish(streams.events_subject(ws, ins), orjson.dumps([event]))
    return message_id


async def test_tail_shows_only_the_callers_workspace(
    cli: Cli, registry: Registry, nats_client: NatsClient, platform: Platform
) -> None:
    executor = f"127.0.0.1:{platform.executor.port}"
    ws_a, token_a, ins_a = await workspace_with_instance(registry, "Tail A")
    ws_b, _, ins_b = await workspace_with_instance(registry, "Tail B")
    mine = [await publish(nats_client, ws_a, ins_a, f"Mine {i}") for i in range(3)]
    theirs = await publish(nats_client, ws_b, ins_b, "Theirs")

    shown = await cli.ok("events", "tail", EVENTFN_TOKEN=token_a, EVENTFN_EXECUTOR_ADDR=executor)
    assert all(m in shown.stdout for m in mine) and "3 pack(s) shown" in shown.stdout
    assert theirs not in shown.stdout and ins_b not in shown.stdout
    last = await cli.ok(
        "events", "tail", "--last", "1", EVENTFN_TOKEN=token_a, EVENTFN_EXECUTOR_ADDR=executor
    )
    assert mine[-1] in last.stdout and mine[0] not in last.stdout
    other = await cli.fails(
        "events", "tail", "--instance", ins_b, EVENTFN_TOKEN=token_a, EVENTFN_EXECUTOR_ADDR=executor
    )
    # An id is looked for in the caller's own workspace: another's is not found there.
    assert other.lines == [
        f"error: not found: instance 'workspaces/{ws_a}/instances/{ins_b}' not found"
    ]


async def test_follow_prints_packs_as_they_are_stored(
    cli: Cli, registry: Registry, nats_client: NatsClient, platform: Platform
) -> None:
    ws, token, ins = await workspace_with_instance(registry, "Follow")
    before = await publish(nats_client, ws, ins, "Before")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFN_")}
    env |= {
        "HOME": str(cli.home),
        "EVENTFN_TOKEN": token,
        "EVENTFN_EXECUTOR_ADDR": f"127.0.0.1:{platform.executor.port}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli.main", "events", "tail", "--follow", "--last", "1",
        cwd=cli.cwd, env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            while before.encode() not in await proc.stdout.readline():
                pass
            after = await publish(nats_client, ws, ins, "After")
            while after.encode() not in await proc.stdout.readline():
                pass
    finally:
        proc.kill()
        await proc.wait()


async def test_tail_needs_a_token(cli: Cli, project: Path) -> None:
    (project / ".eventfn" / "cli.json").write_text(
        (project / ".eventfn" / "cli.json").read_text().replace('"token"', '"old"')
    )
    result = await cli.fails("events", "tail")
    assert len(result.lines) == 1 and result.lines[0].startswith("error: no token")


async def test_tail_with_the_platform_down_says_so_in_one_line(
    cli: Cli, registry: Registry
) -> None:
    _, token, _ = await workspace_with_instance(registry, "No executor")
    started = time.monotonic()
    for env in (
        {"EVENTFN_REGISTRY_ADDR": "127.0.0.1:1", "EVENTFN_TOKEN": "efn_x"},
        {"EVENTFN_EXECUTOR_ADDR": "127.0.0.1:1", "EVENTFN_TOKEN": token},
    ):
        result = await cli.fails("events", "tail", "--follow", **env)
        assert len(result.lines) == 1 and "not reachable" in result.lines[0], result.lines
    assert time.monotonic() - started < 40
