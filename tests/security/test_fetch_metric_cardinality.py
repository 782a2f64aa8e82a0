"""A hostile function fetches thousands of distinct hosts to blow up the executor's metrics:
the fetch duration's `server.address` label stays bounded, refused fetches add no host, and
every other tenant's fetches keep their own label (none falls into OpenTelemetry's overflow)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.common.metrics import Histograms, prometheus_reader
from services.executor.observe import ExecutorMetrics
from services.runtime import EventOutcome, InvocationResult, OutcomeKind, RequestTrace

FETCH = "http_client_request_duration_seconds"
HOSTS = 100
PER_INSTANCE = 10
STATUS_CLASSES = 6  # 1xx … 5xx and error


class Scraped:
    """An executor's metrics read as Prometheus text, as /metrics serves them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        histograms = Histograms()
        self.provider = MeterProvider(metric_readers=[prometheus_reader(self.registry, histograms)])
        self.metrics = ExecutorMetrics(
            self.provider.get_meter("eventfn-executor"), dict, histograms=histograms
        )

    def fetch(self, instance: str, url: str, status: int | None = 200) -> None:
        """Record one invocation of `instance` that fetched `url` and got `status`."""
        error = None if status else f"request to {url} failed, reason: refused"
        request = RequestTrace("GET", url, status, 12.0, error)
        result = InvocationResult([EventOutcome(OutcomeKind.DELIVERED)], requests=[request])
        self.metrics.record(instance, False, result)

    def text(self) -> str:
        """Return the /metrics page."""
        return generate_latest(self.registry).decode()

    def series(self) -> list[dict[str, str]]:
        """Return the labels of each fetch duration series (one per `_count` sample)."""
        return [
            s.labels
            for family in text_string_to_metric_families(self.text())
            for s in family.samples
            if s.name == f"{FETCH}_count"
        ]

    def addresses(self) -> set[str]:
        """Return the `server.address` values of the fetch duration series."""
        return {s.get("server_address", "") for s in self.series()}


@pytest.fixture
def scraped() -> Iterator[Scraped]:
    got = Scraped()
    yield got
    got.provider.shutdown()


def test_thousands_of_hosts_from_one_function_stay_under_the_bound(scraped: Scraped) -> None:
    scraped.fetch("ins_neighbour", "https://api.hubspot.com/crm/v3/objects")
    before = len(scraped.text())
    for i in range(5000):
        scraped.fetch("ins_hostile", f"https://h{i}.attacker.test/")
    scraped.fetch("ins_neighbour", "https://api.segment.io/v1/track")
    scraped.fetch("ins_newcomer", "https://api.stripe.com/v1/customers", 502)

    addresses = scraped.addresses()
    assert {"api.hubspot.com", "api.segment.io", "api.stripe.com", "other"} <= addresses
    assert len(addresses - {"other"}) == PER_INSTANCE + 3
    assert not any("otel_metric_overflow" in s for s in scraped.series())
    assert len(scraped.text()) < before + 64 * 1024  # was 8 MB


def test_many_hostile_instances_together_stay_under_the_bound(scraped: Scraped) -> None:
    for n in range(60):
        for i in range(40):
            scraped.fetch(f"ins_hostile{n}", f"https://h{i}.i{n}.attacker.test/", 200 + i % 4 * 100)
    scraped.fetch("ins_late", "https://api.late.example/")

    addresses = scraped.addresses()
    assert len(addresses - {"other"}) == HOSTS
    assert "api.late.example" not in addresses  # the bound holds for everyone
    assert len(scraped.series()) <= (HOSTS + 1) * STATUS_CLASSES
    assert not any("otel_metric_overflow" in s for s in scraped.series())


def test_refused_fetches_add_no_host(scraped: Scraped) -> None:
    for i in range(500):
        scraped.fetch("ins_hostile", f"http://10.0.{i // 250}.{i % 250}/", None)
    scraped.fetch("ins_hostile", "http://169.254.169.254/latest/meta-data/", None)
    assert scraped.addresses() == {"other"}
    # Its quota is untouched: the hosts that answer it still get their label.
    scraped.fetch("ins_hostile", "https://api.mailchimp.com/3.0/lists")
    assert scraped.addresses() == {"other", "api.mailchimp.com"}


def test_a_labelled_host_keeps_its_label_for_errors_and_other_instances(
    scraped: Scraped,
) -> None:
    for i in range(PER_INSTANCE):
        scraped.fetch("ins_a", f"https://api{i}.example.com/")
    scraped.fetch("ins_a", "https://api0.example.com/", None)  # down now: still its own
    scraped.fetch("ins_b", "https://api1.example.com/", 503)  # shared: costs ins_b nothing
    scraped.fetch("ins_b", "https://own.example.org/")
    scraped.fetch("ins_a", "https://one-too-many.example.com/")

    labels = {(s["server_address"], s["eventfn_status_class"]) for s in scraped.series()}
    assert ("api0.example.com", "error") in labels
    assert ("api1.example.com", "5xx") in labels
    assert ("own.example.org", "2xx") in labels
    assert ("other", "2xx") in labels
    assert "one-too-many.example.com" not in scraped.addresses()
