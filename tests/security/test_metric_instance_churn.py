"""A deleted instance's counters leave the executor's metrics. `eventfn_events_outcomes_total`
and `eventfn_invocations_total` kept every instance id they ever counted, for the process's
lifetime, and OpenTelemetry exports at most 2,000 series a metric: a tenant creating, feeding
and deleting instances (500, four outcomes each) sent every other tenant's new instances to one
`otel_metric_overflow` series, blinding dashboards and alerts by instance until a restart."""

from __future__ import annotations

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common.metrics import Histograms, Tally, prometheus_reader
from services.executor.observe import ExecutorMetrics
from services.runtime import EventOutcome, InvocationResult, OutcomeKind
from tests.eventually import eventually
from tests.observability.test_metrics import scrape, total
from tests.pipeline.conftest import Platform, Sink, platform, sink
from tests.pipeline.test_delivery import SINGLE, batch_body, send
from tests.registry.conftest import auth, registry

__all__ = ["platform", "registry", "sink"]
OUTCOMES = "eventfn_events_outcomes_total"


def workspace(instance_id: str) -> str:
    """The workspace of an instance of these tests: the neighbour's own, the churner's."""
    return "ws_neighbour" if instance_id == "ins_neighbour" else "ws_churner"


HISTOGRAMS = ("eventfn_invocation_duration_seconds", "eventfn_invocation_events")


async def test_a_deleted_instances_series_leave_the_executors_metrics(
    platform: Platform, sink: Sink
) -> None:
    instance = await platform.instance(SINGLE, sink.url)
    await send(platform, batch_body(3))
    await sink.wait_for(3)
    port = platform.executor.metrics_port
    assert port

    async def counted() -> float:
        return total(await scrape(port), OUTCOMES, eventfn_instance_id=instance)

    async def timed() -> list[float]:
        samples = await scrape(port)
        return [total(samples, f"{n}_count", eventfn_instance_id=instance) for n in HISTOGRAMS]

    await eventually(counted, "the instance's outcomes counted", until=lambda n: n >= 3)
    assert all(n >= 1 for n in await timed()), "the instance's invocations are not timed"
    await platform.registry.stub.DeleteInstance(
        pb.DeleteInstanceRequest(name=platform.instance_name(instance)),
        metadata=auth(platform.owner),
    )
    await platform.executor.watcher.wait_until(lambda v: instance not in v.instances)
    assert await counted() == 0, "a deleted instance's series is still exported"
    assert await timed() == [0, 0], "a deleted instance's histograms are still exported"


def test_churned_instances_leave_room_for_a_neighbours() -> None:
    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry, disable_target_info=True)]
    )
    deleted: set[str] = set()
    tally = Tally(
        provider.get_meter("eventfn-executor"),
        "eventfn.events.outcomes",
        unit="{event}",
        description="Events by outcome",
        attributes=("eventfn.instance_id", "eventfn.outcome"),
        owner=lambda instance_id: None if instance_id in deleted else workspace(instance_id),
    )
    for i in range(500):  # each instance created, fed and deleted
        for outcome in ("delivered", "retry", "discard", "failure"):
            tally.add(1, f"ins_churn{i:04d}", outcome)
        deleted.add(f"ins_churn{i:04d}")
        if i % 100 == 0:
            generate_latest(registry)  # scraped now and then meanwhile
    tally.add(7, "ins_neighbour", "delivered")
    text = generate_latest(registry).decode()
    assert 'eventfn_instance_id="ins_neighbour"' in text, "the neighbour's instance is not shown"
    assert "ins_churn" not in text


def test_churned_instances_leave_room_in_the_histograms() -> None:
    registry, histograms = CollectorRegistry(), Histograms()
    provider = MeterProvider(metric_readers=[prometheus_reader(registry, histograms)])
    deleted: set[str] = set()
    metrics = ExecutorMetrics(
        provider.get_meter("eventfn-executor"),
        dict,
        owner=lambda instance_id: None if instance_id in deleted else workspace(instance_id),
        histograms=histograms,
    )
    fed = InvocationResult(outcomes=[EventOutcome(OutcomeKind.DELIVERED)], duration_ms=3.0)
    for i in range(2100):  # each instance created, fed once and deleted
        metrics.record(f"ins_churn{i:04d}", False, fed)
        deleted.add(f"ins_churn{i:04d}")
        if i % 200 == 0:
            generate_latest(registry)  # scraped now and then meanwhile
    metrics.record("ins_neighbour", False, fed)
    text = generate_latest(registry).decode()
    for name in HISTOGRAMS:
        counts = [line for line in text.splitlines() if line.startswith(f"{name}_count")]
        assert counts, f"{name} is not shown"
        assert all('eventfn_instance_id="ins_neighbour"' in line for line in counts), (
            f"the neighbour's invocations went to {name}'s overflow series"
        )


def test_a_tenants_live_instances_leave_room_for_a_neighbours() -> None:
    """Within its quota of instances, one tenant's live instances (four outcomes each) took
    every series of the executor's metrics: a neighbour's new instance was counted in the
    overflow series alone. A workspace's instances take at most a quarter of the series; its
    others are counted in an overflow series of its own."""
    registry, histograms = CollectorRegistry(), Histograms()
    provider = MeterProvider(metric_readers=[prometheus_reader(registry, histograms)])
    metrics = ExecutorMetrics(
        provider.get_meter("eventfn-executor"), dict, workspace, histograms=histograms
    )
    outcomes = [EventOutcome(kind) for kind in OutcomeKind]
    for i in range(1000):
        metrics.record(f"ins_churn{i:04d}", False, InvocationResult(outcomes=outcomes))
    metrics.record(
        "ins_neighbour", False, InvocationResult(outcomes=[EventOutcome(OutcomeKind.DELIVERED)])
    )
    text = generate_latest(registry).decode()
    mine = [line for line in text.splitlines() if line.startswith(OUTCOMES)]
    assert any('eventfn_instance_id="ins_neighbour"' in line for line in mine), (
        "the neighbour's outcomes went to an overflow series"
    )
    for name in HISTOGRAMS:
        assert any(
            line.startswith(f"{name}_count") and 'eventfn_instance_id="ins_neighbour"' in line
            for line in text.splitlines()
        ), f"the neighbour's invocations went to {name}'s overflow series"
    overflow = [line for line in mine if 'otel_metric_overflow="true"' in line]
    assert overflow and all('eventfn_workspace_id="ws_churner"' in line for line in overflow)
