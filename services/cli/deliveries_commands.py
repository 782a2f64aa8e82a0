"""`eventfn deliveries`: what happened to an instance's events, minute by minute."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from eventfn_api.executor.v1 import executor_pb2 as pb
from eventfn_api.executor.v1 import executor_pb2_grpc
from eventfn_api.type.v1 import types_pb2
from services.cli.client import (
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

BARS = " ▁▂▃▄▅▆▇█"
HEALTH = {
    pb.HEALTH_NO_EVENTS: "[dim]no events in 15 min[/]",
    pb.HEALTH_HEALTHY: "[green]healthy[/]",
    pb.HEALTH_DEGRADED: "[yellow]degraded[/]",
    pb.HEALTH_FAILING: "[red]failing[/]",
}


def sparkline(values: list[int]) -> str:
    """Draw values as a one-line bar chart."""
    top = max(values, default=0)
    if top == 0:
        return BARS[0] * len(values)
    return "".join(BARS[round(v / top * (len(BARS) - 1))] for v in values)


def deliveries(
    instance_id: str,
    failures: Annotated[bool, typer.Option("--failures", help="Show sampled failures.")] = False,
    limit: Annotated[int, typer.Option(help="Rows to show.")] = 30,
) -> None:
    """Show an instance's deliveries per minute (or its failures), health and backlog."""
    instance = name(instance_id, names.INSTANCE)
    with stub("executor", executor_pb2_grpc.ExecutorStub) as ex:
        stats = ex.GetDeliveryStats(
            pb.GetDeliveryStatsRequest(name=f"{instance}/deliveryStats"), metadata=metadata()
        )
        listed: Any
        if failures:
            listed = ex.ListDeliveryFailures(
                pb.ListDeliveryFailuresRequest(parent=instance, page_size=limit),
                metadata=metadata(),
            )
        else:
            listed = ex.ListDeliveryMinutes(
                pb.ListDeliveryMinutesRequest(parent=instance, page_size=limit),
                metadata=metadata(),
            )
    t = stats.totals
    out.print(
        f"{instance_id}: {HEALTH[stats.health]} over the last 15 min — last 24 h: "
        f"{t.delivered} delivered, "
        f"{t.retried} retried, {t.discarded} discarded, {t.failed} failed; "
        f"{t.invocations} invocations, "
        f"{t.execution_time.ToTimedelta().total_seconds():.1f} s execution; "
        f"{stats.pending_retries} pending retries, {stats.dead_letters} dead letters"
    )
    if failures:
        for f in listed.failures:
            out.print(
                f"\n[bold]{when(f.time)}[/] {types_pb2.Outcome.Name(f.outcome)} "
                f"{safe(f.message_id)} ({short(f.version)})",
                highlight=False,
            )
            out.print(f"  [red]{safe(f.error.type)}[/]: ", end="", highlight=False)
            out.print(plain(f.error.message), markup=False, highlight=False)
            where = location_text(f.error.stack)
            if where:
                out.print(f"  at {safe(where)}", highlight=False)
            if f.trace_id:
                out.print(f"  trace {f.trace_id} (eventfn trace {f.trace_id})", highlight=False)
            if f.invocation_events > 1 and (f.logs or f.requests):
                out.print(
                    f"  logs and requests of the invocation's {f.invocation_events} events "
                    "(this one's among them):",
                    highlight=False,
                )
            print_logs_and_requests(f.logs, f.requests)
        if not listed.failures:
            out.print("no failures sampled in the last hour")
        elif any(f.outcome == types_pb2.OUTCOME_FAILED for f in listed.failures):
            out.print(
                f"\nfailed events are kept as dead letters: fix the function, then "
                f"`eventfn dead replay {instance_id}`",
                markup=False,
                highlight=False,
            )
        return
    minutes = list(reversed(listed.minutes))
    out.print("delivered per minute: " + sparkline([m.delivered for m in minutes]))
    table(
        "per minute",
        ["minute", "delivered", "retried", "discarded", "failed", "invocations", "exec ms"],
        [
            [
                when(m.minute),
                m.delivered,
                m.retried,
                m.discarded,
                m.failed,
                m.invocations,
                f"{m.execution_time.ToTimedelta().total_seconds() * 1000:.0f}",
            ]
            for m in listed.minutes
        ],
    )
