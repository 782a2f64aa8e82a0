"""An invoke span names its worst event's outcome and, for mixed invocations, how many
events had each: `outcome=discard events=3` alone read as if all three were discarded."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.executor.observe import annotate
from services.runtime import InvocationResult, OutcomeKind
from services.runtime.model import EventOutcome


def attributes_after(*kinds: OutcomeKind) -> dict[str, object]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("invoke") as span:
        annotate(span, InvocationResult(outcomes=[EventOutcome(kind) for kind in kinds]))
    (finished,) = exporter.get_finished_spans()
    return dict(finished.attributes or {})


def test_a_mixed_invocation_counts_each_outcome() -> None:
    got = attributes_after(OutcomeKind.DELIVERED, OutcomeKind.DISCARD, OutcomeKind.DELIVERED)
    assert got["eventfn.outcome"] == "discard"
    assert got["eventfn.outcomes"] == "2 delivered, 1 discard"


def test_an_invocation_of_one_outcome_has_no_counts() -> None:
    got = attributes_after(OutcomeKind.RETRY, OutcomeKind.RETRY)
    assert got["eventfn.outcome"] == "retry" and got["eventfn.events"] == 2
    assert "eventfn.outcomes" not in got
