"""`Distribution`: a histogram kept in process and exported as the SDK's own histogram was."""

from __future__ import annotations

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from services.common.metrics import MAX_SERIES, Histograms, Tally, prometheus_reader

# On a boundary, between two, past the last; by instance and batch, as the executor records.
RECORDS = [
    (0.0, "ins_a", False),
    (5.0, "ins_a", False),
    (5.000001, "ins_a", True),
    (0.003, "ins_b", False),
    (742.5, "ins_b", False),
    (10000.0, "ins_b", True),
    (12000.0, "ins_b", True),
]
NAMES = ("eventfn.instance_id", "eventfn.batch")


def lines(registry: CollectorRegistry, prefix: str) -> list[str]:
    """Return the lines of a /metrics page about one metric."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if prefix in line]


def test_the_page_shows_the_sdks_histogram_names_units_buckets_and_labels() -> None:
    sdk_registry, registry = CollectorRegistry(), CollectorRegistry()
    sdk = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=sdk_registry, disable_target_info=True)]
    ).get_meter("eventfn-executor")
    histogram = sdk.create_histogram("eventfn.x.duration", unit="s", description="X")
    histograms = Histograms()
    meter = MeterProvider(metric_readers=[prometheus_reader(registry, histograms)]).get_meter(
        "eventfn-executor"
    )
    kept = histograms.create(
        meter, "eventfn.x.duration", unit="s", description="X", attributes=NAMES
    )
    # The histograms join what the SDK collects (the executor's counters come with them).
    Tally(meter, "eventfn.x", unit="{x}", description="X", attributes=("a",)).add(1, "a")
    for value, instance, batch in RECORDS:
        histogram.record(value, {"eventfn.instance_id": instance, "eventfn.batch": batch})
        kept.record(value, instance, batch)

    expected = lines(sdk_registry, "eventfn_x_duration_seconds")
    assert len(expected) == 2 + 4 * (16 + 2)  # HELP, TYPE; 4 series of 16 buckets, sum, count
    assert lines(registry, "eventfn_x_duration_seconds") == expected


def test_the_histograms_join_their_meters_scope() -> None:
    reader, histograms = InMemoryMetricReader(), Histograms()
    meter = MeterProvider(metric_readers=[reader]).get_meter("eventfn-executor")
    meter.create_counter("eventfn.y", unit="{y}").add(1)
    kept = histograms.create(
        meter, "eventfn.x.duration", unit="s", description="X", attributes=NAMES
    )
    kept.record(1.5, "ins_a", False)
    kept.record(2.5, "ins_a", False)
    data = reader.get_metrics_data()
    assert data is not None

    (scope,) = histograms.added_to(data).resource_metrics[0].scope_metrics
    assert scope.scope.name == "eventfn-executor"
    y, x = scope.metrics
    assert (y.name, x.name, x.unit) == ("eventfn.y", "eventfn.x.duration", "s")
    (point,) = x.data.data_points
    assert (point.count, point.sum, point.min, point.max) == (2, 4.0, 1.5, 2.5)
    assert point.attributes == {"eventfn.instance_id": "ins_a", "eventfn.batch": False}


def test_past_max_series_new_attribute_sets_share_one_overflow_series() -> None:
    """A tenant's live instances are its to create: 5,000 of them made the executor's
    /metrics 49 MB, 5 s of CPU a scrape. The histograms keep as many series as the SDK's."""
    registry = CollectorRegistry()
    histograms = Histograms()
    meter = MeterProvider(metric_readers=[prometheus_reader(registry, histograms)]).get_meter(
        "eventfn-executor"
    )
    kept = histograms.create(
        meter, "eventfn.y.duration", unit="s", description="Y", attributes=NAMES
    )
    tally = Tally(meter, "eventfn.y", unit="{y}", description="Y", attributes=NAMES)
    for i in range(MAX_SERIES + 500):
        kept.record(1.0, f"ins_{i}", False)
        tally.add(1, f"ins_{i}", False)
    for series in ("eventfn_y_duration_seconds_count", "eventfn_y_total"):
        found = [line for line in lines(registry, series) if not line.startswith("#")]
        assert len(found) == MAX_SERIES + 1, (series, len(found))
        (overflow,) = [line for line in found if 'otel_metric_overflow="true"' in line]
        assert overflow.endswith(" 500.0"), overflow
