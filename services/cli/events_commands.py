"""`eventfn events tail`: look at your workspace's packs in the EVENTS stream.

The executor reads them for the caller (TailEvents): only packs of its workspace's
instances it may read, whatever NATS holds.
"""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from eventfn_api.executor.v1 import executor_pb2 as pb
from eventfn_api.executor.v1 import executor_pb2_grpc
from services.cli.client import metadata, out, safe, stub, workspace
from services.cli.client import name as cli_name
from services.common import names

events = typer.Typer(help="Your workspace's event streams.", no_args_is_help=True)


def describe(instance: str, data: str, number: int) -> list[str]:
    """Render one pack (the `number`th shown): its instance and a line per event."""
    lines = [f"[bold]#{number}[/] instance {names.last(instance)}"]
    try:
        batch = orjson.loads(data)
    except orjson.JSONDecodeError:
        return [*lines, f"  <{len(data)} characters, not JSON>"]
    for event in batch if isinstance(batch, list) else [batch]:
        if not isinstance(event, dict):
            lines.append(f"  <{type(event).__name__}, not an event>")
            continue
        name = event.get("event") or event.get("name") or ""
        who = event.get("userId") or event.get("anonymousId") or ""
        kind, message_id = event.get("type", "?"), event.get("messageId", "")
        lines.append(f"  {safe(kind):9} {safe(name):28} {safe(who):20} {safe(message_id)}")
    return lines


@events.command("tail")
def tail(
    instance: Annotated[str, typer.Option(help="Only packs for this instance id.")] = "",
    last: Annotated[int, typer.Option(help="Start this many packs back (0..1000).")] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new packs.")
    ] = False,
) -> None:
    """Print the latest packs of your workspace's instances, one line per event."""
    request = pb.TailEventsRequest(
        parent=workspace(),
        instance=cli_name(instance, names.INSTANCE) if instance else "",
        last=last,
        follow=follow,
    )
    shown = 0
    try:
        with stub("executor", executor_pb2_grpc.ExecutorStub) as executor:
            for pack in executor.TailEvents(request, metadata=metadata()):
                shown += 1
                for line in describe(pack.instance, pack.events_json, shown):
                    out.print(line, highlight=False)
    except KeyboardInterrupt:
        return
    if not follow:
        out.print(f"[dim]{shown} pack(s) shown[/]")
