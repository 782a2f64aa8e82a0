"""Router and executor serve Prometheus text: counters match what happened, and the executors'
backlog gauge rises while no executor consumes and falls back to 0 once one does."""

from __future__ import annotations

from contextlib import AsyncExitStack

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.executor.app import start_executor
from services.executor.settings import ExecutorSettings
from tests.eventually import eventually
from tests.observability.conftest import Platform
from tests.pipeline.conftest import Sink, start_platform
from tests.pipeline.test_delivery import SINGLE, batch_body, send
from tests.registry.conftest import SERVICE, Registry


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Return every sample of a /metrics page, keyed by name and labels."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Sum the samples of a metric whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def backlog(port: int) -> float:
    """Return the executors' backlog the router reports: packs waiting and in flight."""
    samples = await scrape(port)
    return total(samples, "eventfn_events_waiting") + total(samples, "eventfn_events_in_flight")


async def test_counters_match_the_events_and_the_backlog_gauge_follows_the_executors(
    registry: Registry, sink: Sink, nats_url: str
) -> None:
    # A durable consumer of this workspace's own: the session's shared one holds what other
    # tests left (packs in flight to executors they stopped), which the gauge counts too.
    async with AsyncExitStack() as stack:
        platform = await start_platform(registry, nats_url, stack, own_consumer=True)
        await _counters_and_backlog(platform, sink, nats_url)


async def _counters_and_backlog(platform: Platform, sink: Sink, nats_url: str) -> None:
    instance = await platform.instance(SINGLE, sink.url)
    await send(platform, batch_body(30))
    await sink.wait_for(30)

    router, executor = platform.router.metrics_port, platform.executor.metrics_port
    assert router and executor
    source = platform.source_id

    async def delivered() -> float:
        return total(
            await scrape(executor),
            "eventfn_events_outcomes_total",
            eventfn_instance_id=instance,
            eventfn_outcome="delivered",
        )

    await eventually(delivered, "30 delivered outcomes counted", until=lambda n: n >= 30)
    routed = await scrape(router)
    assert total(routed, "eventfn_router_events_received_total", eventfn_source_id=source) == 30
    assert total(routed, "eventfn_router_events_stored_total", eventfn_source_id=source) == 30
    outcomes = await scrape(executor)
    assert total(outcomes, "eventfn_events_outcomes_total", eventfn_instance_id=instance) == 30

    # No executor consumes: the backlog rises with what is sent.
    await platform.executor.consumer.stop()
    await platform.executor.consumer.hand_back()  # its last pull request expired: none left
    await send(platform, batch_body(20, start=100))
    await eventually(lambda: backlog(router), "a backlog", until=lambda n: n >= 1, seconds=15)
    # An executor consumes again: the backlog falls to 0 and the events arrive.
    async with AsyncExitStack() as stack:
        await start_executor(
            ExecutorSettings(
                executor_listen="127.0.0.1:0",
                nats_url=nats_url,
                registry_addr=f"127.0.0.1:{platform.registry.port}",
                database_url=platform.registry.database_url,
                service_token=SERVICE,
                executor_workers=1,
                egress_allow="127.0.0.1/32",
                executor_consumer=f"executor-{platform.workspace_id}",
                executor_subjects=f"events.{platform.workspace_id}.>",
            ),
            stack,
        )
        await sink.wait_for(50)
        await eventually(lambda: backlog(router), "no backlog", until=lambda n: n == 0, seconds=15)
