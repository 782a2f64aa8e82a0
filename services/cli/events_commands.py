"""`eventfn events tail`: look at the packs in the EVENTS stream (operator tool)."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

import orjson
import typer

from services.cli.client import fail, load_context, out
from services.common import streams
from services.common.settings import nats_servers

events = typer.Typer(
    help="The event streams (operator tools: direct NATS access).", no_args_is_help=True
)


def nats_url() -> str:
    """Return the NATS URL (EVENTFN_NATS_URL, else the one `eventfn up` recorded)."""
    url = os.environ.get("EVENTFN_NATS_URL") or load_context().get("nats")
    if not url:
        fail("don't know where NATS is: run `make up` first or set EVENTFN_NATS_URL")
    return url


def describe(subject: str, data: bytes, seq: int) -> list[str]:
    """Render one pack: its subject and a line per event."""
    parsed = streams.parse_subject(subject)
    lines = [f"[bold]#{seq}[/] instance {parsed.instance_id} (workspace {parsed.workspace_id})"]
    try:
        batch = orjson.loads(data)
    except orjson.JSONDecodeError:
        return [*lines, f"  <{len(data)} bytes, not JSON>"]
    for event in batch if isinstance(batch, list) else [batch]:
        name = event.get("event") or event.get("name") or ""
        who = event.get("userId") or event.get("anonymousId") or ""
        lines.append(
            f"  {event.get('type', '?'):9} {name!s:28} {who!s:20} {event.get('messageId', '')}"
        )
    return lines


async def _tail(instance: str, last: int, follow: bool) -> None:
    import nats
    from nats.js.api import ConsumerConfig, DeliverPolicy

    nc = await nats.connect(nats_servers(nats_url()), connect_timeout=3, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        info = await js.stream_info(streams.EVENTS_STREAM)
        total = info.state.messages
        start = max(info.state.first_seq, info.state.last_seq - last + 1)
        filter_subject = streams.subject_filter("events", instance_id=instance or None)
        sub = await js.subscribe(
            filter_subject,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
            ),
        )
        out.print(f"[dim]{total} pack(s) in EVENTS; showing from #{start}[/]")
        while True:
            try:
                msg = await sub.next_msg(timeout=None if follow else 1.0)
            except TimeoutError:
                return
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
    """Print the latest packs of the EVENTS stream, one line per event."""
    try:
        asyncio.run(_tail(instance, last, follow))
    except KeyboardInterrupt:
        pass
    except OSError as error:
        fail(f"cannot reach NATS at {nats_url()}: {error}")
