"""`Tally`: a counter summed in process and exported as any OpenTelemetry counter."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum

from services.common.metrics import Tally


def test_sums_per_attribute_values_export_as_a_monotonic_cumulative_counter() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    tally = Tally(
        meter, "eventfn.x", unit="{event}", description="X", attributes=("source", "outcome")
    )
    tally.add(3, "a", "delivered")
    tally.add(2, "a", "delivered")
    tally.add(1, "b", "retry")

    def exported() -> dict[tuple[str, str], int]:
        data = reader.get_metrics_data()
        assert data is not None
        (metric,) = data.resource_metrics[0].scope_metrics[0].metrics
        assert (metric.name, metric.unit) == ("eventfn.x", "{event}")
        assert isinstance(metric.data, Sum) and metric.data.is_monotonic
        return {
            (str(p.attributes["source"]), str(p.attributes["outcome"])): int(p.value)
            for p in metric.data.data_points
            if p.attributes
        }

    assert exported() == {("a", "delivered"): 5, ("b", "retry"): 1}
    tally.add(4, "b", "retry")
    assert exported() == {("a", "delivered"): 5, ("b", "retry"): 5}  # cumulative
