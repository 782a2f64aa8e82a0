"""`eventfn dead`: list, show, replay and purge an instance's dead letters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

import typer
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from eventfn_api.retrier.v1 import retrier_pb2 as pb
from eventfn_api.retrier.v1 import retrier_pb2_grpc
from eventfn_api.type.v1 import types_pb2
from services.cli.client import (
    as_json,
    fail,
    metadata,
    name,
    out,
    plain,
    print_logs_and_requests,
    safe,
    short,
    stub,
    table,
    when,
)
from services.common import names
from services.common.error_location import location_text

dead = typer.Typer(
    help="Events that failed, or ran out of retries: list, show, replay (once), purge."
)

Since = Annotated[
    str | None, typer.Option("--since", help="Only those dead-lettered at or after (ISO 8601).")
]
Until = Annotated[
    str | None, typer.Option("--until", help="Only those dead-lettered before (ISO 8601).")
]
Ids = Annotated[
    list[str] | None,
    typer.Option("--id", help="A dead letter id (repeatable); default: all in the range."),
]


def timestamp(value: str | None, option: str) -> timestamp_pb2.Timestamp | None:
    """Parse an ISO 8601 time (UTC when no offset) into a Timestamp."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{option} {value!r} is not an ISO 8601 time, e.g. 2026-01-31T12:00:00Z")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(parsed)
    return ts


def letter_name(instance: str, letter: str) -> str:
    """Return a dead letter's name from an instance (id or name) and a letter id (`k7c…q4.0`)."""
    if "/" in letter:
        return letter
    return f"{name(instance, names.INSTANCE)}/deadLetters/{letter}"


@dead.command("list")
def list_dead(
    instance_id: str,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, typer.Option(help="Dead letters per page (1..500).")] = 50,
    page_token: Annotated[str, typer.Option(help="Continue after a previous page.")] = "",
) -> None:
    """List an instance's dead letters, newest first."""
    request = pb.ListDeadLettersRequest(
        parent=name(instance_id, names.INSTANCE),
        start_time=timestamp(since, "--since"),
        end_time=timestamp(until, "--until"),
        page_size=limit,
        page_token=page_token,
    )
    with stub("retrier", retrier_pb2_grpc.RetrierStub) as retrier:
        resp = retrier.ListDeadLetters(request, metadata=metadata())
    table(
        f"dead letters of {instance_id}",
        ["id", "dead at", "messageId", "attempts", "reason"],
        [
            (short(d.name), when(d.dead_time), d.message_id, d.attempt_count, d.reason[:80])
            for d in resp.dead_letters
        ],
    )
    if resp.next_page_token:
        out.print(f"more: --page-token {resp.next_page_token}", highlight=False)


@dead.command("show")
def show(
    instance_id: Annotated[str, typer.Argument(help="The instance id (or the letter's name).")],
    dead_letter_id: Annotated[
        str, typer.Argument(help="The dead letter's id, e.g. k7c…q4.0 (see `dead list`).")
    ] = "",
    json: Annotated[
        bool, typer.Option("--json", help="Print the whole dead letter as JSON.")
    ] = False,
) -> None:
    """Show one dead letter: the event, its last 20 attempts, where it failed, logs, requests."""
    if not dead_letter_id and "/deadLetters/" not in instance_id:
        fail("name the dead letter: `eventfn dead show ins_… <id from dead list>`")
    letter_full = letter_name(instance_id, dead_letter_id or instance_id)
    with stub("retrier", retrier_pb2_grpc.RetrierStub) as retrier:
        letter = retrier.GetDeadLetter(
            pb.GetDeadLetterRequest(name=letter_full), metadata=metadata()
        ).dead_letter
    if json:
        as_json(letter)
        return
    instance = letter.name.split("/deadLetters/")[0]
    out.print(
        f"[bold]{short(letter.name)}[/] instance {short(instance)} "
        f"messageId {safe(letter.message_id)}\n"
        f"first attempt {when(letter.first_attempt_time)}, dead {when(letter.dead_time)}, "
        f"{letter.attempt_count} attempt(s)",
        highlight=False,
    )
    out.print(f"reason: {plain(letter.reason)}", markup=False, highlight=False)
    if letter.trace_id:
        out.print(f"trace {letter.trace_id} (eventfn trace {letter.trace_id})", highlight=False)
    stack = letter.attempts[-1].error.stack if letter.attempts else ""
    where = location_text(stack)
    if where:
        out.print(f"at {safe(where)}", highlight=False)
    if stack:
        out.print(plain(stack), style="dim", markup=False, highlight=False)
    first = letter.attempt_count - len(letter.attempts) + 1
    table(
        "attempts" if first == 1 else f"the last {len(letter.attempts)} attempts",
        ["#", "time", "outcome", "error"],
        [
            (n, when(a.time), types_pb2.Outcome.Name(a.outcome), a.error.message)
            for n, a in enumerate(letter.attempts, start=first)
        ],
    )
    if letter.last_logs or letter.last_requests:
        out.print("the last attempt:")
        print_logs_and_requests(letter.last_logs, letter.last_requests)
    out.print(plain(letter.event_json), markup=False, highlight=False)


@dead.command("replay")
def replay(
    instance_id: str,
    ids: Ids = None,
    since: Since = None,
    until: Until = None,
) -> None:
    """Send dead letters back to their instance (one, several, or all in a range), once.

    Replayed letters leave DEAD; the other letters of their packs get new ids. The replay runs
    as an operation on the retrier; the command waits for it.
    """
    request = pb.ReplayDeadLettersRequest(
        parent=name(instance_id, names.INSTANCE),
        names=[letter_name(instance_id, i) for i in ids or []],
        start_time=timestamp(since, "--since"),
        end_time=timestamp(until, "--until"),
        request_id=str(uuid.uuid4()),
    )
    with stub("retrier", retrier_pb2_grpc.RetrierStub) as retrier:
        operation = retrier.ReplayDeadLetters(request, metadata=metadata())
    with stub("retrier", operations_pb2_grpc.OperationsStub) as operations:
        while not operation.done:
            operation = operations.WaitOperation(
                operations_pb2.WaitOperationRequest(
                    name=operation.name, timeout=duration_pb2.Duration(seconds=30)
                ),
                metadata=metadata(),
            )
    if operation.HasField("error"):
        fail(f"the replay failed: {operation.error.message} ({operation.name})")
    result = pb.ReplayDeadLettersResponse()
    operation.response.Unpack(result)
    out.print(f"replayed {result.replayed} dead letter(s) to {instance_id}", highlight=False)


@dead.command("purge")
def purge(
    instance_id: str,
    ids: Ids = None,
    until: Until = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before deleting all.")] = False,
) -> None:
    """Delete dead letters (`--id k7c…q4.0` one, `--id k7c…q4` its whole pack); all of the
    instance by default."""
    if not ids and not yes:
        typer.confirm(f"delete every dead letter of {instance_id}?", abort=True)
    request = pb.PurgeDeadLettersRequest(
        parent=name(instance_id, names.INSTANCE),
        names=[letter_name(instance_id, i) for i in ids or []],
        end_time=timestamp(until, "--until"),
    )
    with stub("retrier", retrier_pb2_grpc.RetrierStub) as retrier:
        resp = retrier.PurgeDeadLetters(request, metadata=metadata())
    out.print(f"purged {resp.purged} dead letter(s) of {instance_id}", highlight=False)
