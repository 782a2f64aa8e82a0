"""`eventfn trace`: an event's journey through the platform as a tree with timings."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import typer
from google.protobuf import json_format

from eventfn_api.executor.v1 import executor_pb2 as pb
from eventfn_api.executor.v1 import executor_pb2_grpc
from services.cli.client import as_json, metadata, out, plain, stub, workspace

_TRACE_ID = re.compile(r"^[0-9a-fA-F]{32}$")
# Attributes worth a line in the tree, in this order.
SHOWN = (
    "eventfn.outcome",
    "eventfn.outcomes",
    "eventfn.retry.outcome",
    "eventfn.instance_id",
    "eventfn.events",
    "eventfn.attempt",
    "http.response.status_code",
    "url.full",
    "eventfn.dead.reason",
)


def _value(value: object) -> object:
    """Show an attribute as it was recorded: a Struct holds every number as a double."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _duration_ms(span: pb.TraceSpan) -> float:
    return span.duration.ToTimedelta().total_seconds() * 1000


def render(spans: Sequence[pb.TraceSpan]) -> list[str]:
    """Lay spans out as a tree (children under their parent, in start order), one line each:
    offset from the first span's start, duration, service, name, status and key attributes."""
    if not spans:
        return []
    ids = {s.span_id for s in spans}
    children: dict[str, list[pb.TraceSpan]] = {}
    for s in spans:
        parent = s.parent_span_id if s.parent_span_id in ids else ""
        children.setdefault(parent, []).append(s)
    start = min(s.start_time.ToNanoseconds() for s in spans)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda x: x.start_time.ToNanoseconds()):
            offset = (s.start_time.ToNanoseconds() - start) / 1e6
            attributes = json_format.MessageToDict(s.attributes)
            details = [
                f"{k.split('.')[-1]}={_value(attributes[k])}" for k in SHOWN if k in attributes
            ]
            for event in s.events:
                fields = json_format.MessageToDict(event)
                if fields.get("name") == "exception":
                    details.append(
                        f"{fields.get('exception.type', '')}: {fields.get('exception.message', '')}"
                    )
            status = " ERROR" if s.error else ""
            lines.append(
                f"{offset:9.1f} ms {_duration_ms(s):8.1f} ms  {'  ' * depth}{s.name}{status}"
                f"  [{s.service}]" + (f"  {' '.join(details)}" if details else "")
            )
            walk(s.span_id, depth + 1)

    walk("", 0)
    return lines


def trace(
    target: Annotated[str, typer.Argument(help="An event's messageId, or a trace id.")],
    json: Annotated[bool, typer.Option("--json", help="Print the spans as JSON.")] = False,
) -> None:
    """Show an event's recent journey: ingest, route, invoke, fetches, retries, dead letter."""
    request = pb.GetTraceRequest(parent=workspace())
    if _TRACE_ID.match(target):
        request.trace_id = target.lower()
    else:
        request.message_id = target
    with stub("executor", executor_pb2_grpc.ExecutorStub) as executor:
        found = executor.GetTrace(request, metadata=metadata())
    if json:
        as_json(found)
        return
    out.print(f"trace {found.trace_id}", highlight=False)
    for line in render(found.spans):
        out.print(plain(line), markup=False, highlight=False)
    _mention(found.other_trace_ids, "other journeys of this messageId")
    _mention({t for s in found.spans for t in s.linked_trace_ids}, "linked traces")


def _mention(trace_ids: Iterable[Any], what: str) -> None:
    ids = sorted(set(trace_ids))
    if ids:
        out.print(f"{what}: {', '.join(ids)}", highlight=False)
