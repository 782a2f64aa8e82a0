"""Build and run an executor process: NATS, config watch, V8 pool, consumer, gRPC server."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import grpc
from nats.aio.client import Client as NatsClient

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from services.common import call_limits, rpc
from services.common.config_watch import ConfigWatcher
from services.common.deliveries.recorder import DeliveryRecorder
from services.common.metrics import start_metrics
from services.common.page_tokens import PageTokens
from services.common.registry_gate import RegistryGate
from services.common.settings import asyncpg_url
from services.common.streams import open_streams
from services.executor.consumer import PackConsumer
from services.executor.dispatcher import Dispatcher
from services.executor.handoff import Handoff
from services.executor.observe import ExecutorMetrics
from services.executor.servicer import ExecutorServicer
from services.executor.settings import ExecutorSettings
from services.executor.versions import VersionSource
from services.runtime import EgressConfig, RuntimeConfig, RuntimePool

log = logging.getLogger(__name__)
SERVICE_NAME = executor_pb2.DESCRIPTOR.services_by_name["Executor"].full_name
# The largest request: a Preview of draft code (up to 5 MB) with its event and settings.
PREVIEW_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass
class RunningExecutor:
    """A started executor process: its server, port and live parts."""

    server: grpc.aio.Server
    port: int
    watcher: ConfigWatcher
    consumer: PackConsumer
    dispatcher: Dispatcher
    recorder: DeliveryRecorder
    nats: NatsClient
    metrics_port: int = 0  # where /metrics is served (0: not served)


def runtime_config(settings: ExecutorSettings) -> RuntimeConfig:
    """Build the V8 pool's configuration from the executor's settings."""
    allow = tuple(a.strip() for a in settings.egress_allow.split(",") if a.strip())
    egress = EgressConfig.from_environ(
        allow=allow,
        ca_bundle=settings.egress_ca_bundle,
        proxy_checks_names=settings.egress_proxy_checks_names,
    )
    if settings.executor_workers:
        return RuntimeConfig(workers=settings.executor_workers, egress=egress)
    return RuntimeConfig(egress=egress)


async def start_executor(settings: ExecutorSettings, stack: AsyncExitStack) -> RunningExecutor:
    """Connect, wire and start an executor; `stack` stops it gracefully, in reverse order."""
    token = settings.required_service_token("executor")
    metrics = start_metrics("eventfn-executor", settings.executor_metrics_listen, stack)
    nc, js = await open_streams(
        settings,
        settings.nats_url,
        name=settings.executor_name,
    )
    stack.push_async_callback(nc.close)
    db = await asyncpg.create_pool(asyncpg_url(settings.database_url), min_size=1, max_size=4)
    stack.push_async_callback(db.close)
    recorder = DeliveryRecorder(
        asyncpg_url(settings.database_url),
        flush_seconds=settings.executor_records_flush_seconds,
        samples_per_minute=settings.executor_samples_per_minute,
        retention=timedelta(days=settings.executor_records_retention_days),
    )
    await recorder.start()
    stack.push_async_callback(recorder.close)
    pool = RuntimePool(runtime_config(settings))
    await pool.start()
    stack.push_async_callback(pool.close)
    # The dispatcher forgets the instances each new view drops; it follows from the start.
    watcher = ConfigWatcher(
        settings.registry_addr,
        token,
        settings.executor_name,
        on_change=lambda view: dispatcher.follow(view),
    )
    handoff = Handoff(js, settings.retry_max_per_instance)
    dispatcher = Dispatcher(
        pool,
        recorder,
        handoff,
        instance_concurrency=settings.executor_instance_concurrency,
        metrics=ExecutorMetrics(
            metrics.meter,
            lambda: pool.restarts,
            watcher.instance_workspace,
            histograms=metrics.histograms,
            dead_discarded=lambda: handoff.discarded,
        ),
    )
    watcher.start()
    stack.push_async_callback(watcher.close)
    versions = VersionSource(settings.registry_addr, token)
    stack.push_async_callback(versions.close)
    consumer = PackConsumer(
        nc,
        js,
        watcher,
        dispatcher,
        recorder,
        fetch_packs=settings.executor_fetch_packs,
        max_inflight=settings.executor_max_inflight_packs,
        instance_concurrency=settings.executor_instance_concurrency,
        ack_wait=settings.executor_ack_wait_seconds,
        versions=versions,
        max_pending=settings.executor_consumer_max_pending,
        durable=settings.executor_consumer,
        subjects=settings.executor_subjects,
    )
    consumer.start()

    async def drain() -> None:
        await consumer.stop()
        log.info("executor %s stopping after %d packs", settings.executor_name, consumer.packs)
        if not await dispatcher.drain(settings.executor_shutdown_grace_seconds):
            handed = await consumer.hand_back()
            log.warning("shutdown grace passed; %d unfinished packs handed back", handed)
        await consumer.close()

    stack.push_async_callback(drain)
    gate = RegistryGate(settings.registry_addr)
    stack.push_async_callback(gate.close)
    servicer = ExecutorServicer(
        db,
        gate,
        js,
        pool,
        PageTokens.from_secret(token),
        watcher.instance_workspace,
        settings.preview_budget(),
        settings.tail_budget(),
    )
    server, port, health = rpc.create_server(
        address=settings.executor_listen,
        register=[lambda s: executor_pb2_grpc.add_ExecutorServicer_to_server(servicer, s)],
        service_names=[SERVICE_NAME],
        meter=metrics.meter,
        limits=call_limits.ServerLimits(max_message_bytes=PREVIEW_MESSAGE_BYTES),
    )
    await server.start()
    stack.push_async_callback(server.stop, 5)
    await rpc.set_serving(health, [SERVICE_NAME])
    log.info("executor listening on port %d", port)
    return RunningExecutor(
        server, port, watcher, consumer, dispatcher, recorder, nc, metrics_port=metrics.port
    )
