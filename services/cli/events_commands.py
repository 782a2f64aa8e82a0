"""`eventfn events tail`: look at your workspace's packs in the EVENTS stream.

The registry says who the token belongs to (WhoAmI) and which instances it may read
(ListInstances); the CLI then reads only the subjects `events.<workspace id>.*` from NATS
and shows only those instances' packs.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Annotated

import nats
import nats.errors
import orjson
import typer
from nats.js.api import ConsumerConfig, DeliverPolicy

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.cli.client import fail, metadata, out, pages, registry, safe, short
from services.cli.client import name as cli_name
from services.cli.context import load_context, without_password
from services.common import names, streams
from services.common.settings import nats_servers

events = typer.Typer(help="Your workspace's event streams.", no_args_is_help=True)


def nats_url() -> str:
    """Return the NATS URL (EVENTFN_NATS_URL, else the one `eventfn up` recorded)."""
    url = os.environ.get("EVENTFN_NATS_URL") or load_context().get("nats")
    if not url:
        fail("don't know where NATS is: run `make up` first or set EVENTFN_NATS_URL")
    return url


def describe(subject: str, data: bytes, seq: int) -> list[str]:
    """Render one pack: its subject and a line per event."""
    parsed = streams.parse_subject(subject)
    lines = [f"[bold]#{seq}[/] instance {parsed.instance_id}"]
    try:
        batch = orjson.loads(data)
    except orjson.JSONDecodeError:
        return [*lines, f"  <{len(data)} bytes, not JSON>"]
    for event in batch if isinstance(batch, list) else [batch]:
        if not isinstance(event, dict):
            lines.append(f"  <{type(event).__name__}, not an event>")
            continue
        name = event.get("event") or event.get("name") or ""
        who = event.get("userId") or event.get("anonymousId") or ""
        kind, message_id = event.get("type", "?"), event.get("messageId", "")
        lines.append(f"  {safe(kind):9} {safe(name):28} {safe(who):20} {safe(message_id)}")
    return lines


async def _quiet(_: Exception) -> None:
    """Swallow nats-py's connection-error callbacks: the caller reports failures once."""


async def _tail(
    workspace_id: str,
    instance: str | None,
    visible: Callable[[str], bool],
    last: int,
    follow: bool,
) -> None:
    # nats-py retries the first connect forever when max_reconnect_attempts is 0 (the flood
    # of tracebacks of the issue); 1 gives up after a second try, with NoServersError.
    nc = await nats.connect(
        nats_servers(nats_url()),
        connect_timeout=3,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.2,
        error_cb=_quiet,
    )
    try:
        js = nc.jetstream()
        subjects = streams.subject_filter("events", workspace_id=workspace_id, instance_id=instance)
        # Counted before subscribing: without --follow, exactly these are read, then it ends.
        info = await js.stream_info(streams.EVENTS_STREAM, subjects_filter=subjects)
        waiting = sum((info.state.subjects or {}).values())
        skip = max(0, waiting - last)
        sub = await js.subscribe(
            subjects,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        out.print(f"[dim]{waiting} pack(s) for you in EVENTS; showing the last {waiting - skip}[/]")
        seen = 0
        while follow or seen < waiting:
            msg = await sub.next_msg(timeout=None)
            seen += 1
            if seen <= skip or not visible(streams.parse_subject(msg.subject).instance_id):
                continue
            for line in describe(msg.subject, msg.data, msg.metadata.sequence.stream):
                out.print(line, highlight=False)
    finally:
        await nc.close()


@events.command("tail")
def tail(
    instance: Annotated[str, typer.Option(help="Only packs for this instance id.")] = "",
    last: Annotated[int, typer.Option(help="Start this many packs back.")] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new packs.")
    ] = False,
) -> None:
    """Print the latest packs of your workspace's instances, one line per event."""
    with registry() as r:
        me = r.WhoAmI(pb.WhoAmIRequest(), metadata=metadata())
        listing = pb.ListInstancesRequest(parent=me.workspace.name, page_size=500)
        if instance:
            r.GetInstance(
                pb.GetInstanceRequest(name=cli_name(instance, names.INSTANCE)), metadata=metadata()
            )
        readable = {short(i.name) for i in pages(r.ListInstances, listing, "instances")}

    def visible(instance_id: str) -> bool:
        # An instance created after the start is looked up once, then remembered either way.
        if instance_id not in readable and instance_id not in hidden:
            with registry() as r:
                for i in pages(r.ListInstances, listing, "instances"):
                    readable.add(short(i.name))
            if instance_id not in readable:
                hidden.add(instance_id)
        return instance_id in readable

    hidden: set[str] = set()
    try:
        asyncio.run(_tail(short(me.workspace.name), instance or None, visible, last, follow))
    except KeyboardInterrupt:
        pass
    except (OSError, nats.errors.Error) as error:
        fail(
            f"cannot read events from NATS at {without_password(nats_url())} "
            f"({error or type(error).__name__}); "
            "is the platform up? (`make up`, or set EVENTFN_NATS_URL)"
        )
