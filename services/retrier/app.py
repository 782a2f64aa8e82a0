"""Build and run a retrier process: NATS, config watch, RETRY scheduler, gRPC server."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta

import grpc
from google.longrunning import operations_pb2_grpc
from nats.aio.client import Client as NatsClient

from eventfn_api.retrier.v1 import retrier_pb2, retrier_pb2_grpc
from services.common import call_limits, rpc, streams
from services.common.backlog import BacklogGauges, StreamSizeGauge
from services.common.config_watch import ConfigWatcher
from services.common.metrics import count_dead_letters_discarded, start_metrics
from services.common.page_tokens import PageTokens
from services.common.registry_gate import RegistryGate
from services.common.streams import open_streams
from services.retrier.dead_letters import DeadLetterStore
from services.retrier.letter_ids import LetterIds
from services.retrier.operations import Operations
from services.retrier.operations_servicer import OperationsServicer
from services.retrier.scheduler import DURABLE, RetryScheduler
from services.retrier.servicer import RetrierServicer
from services.retrier.settings import RetrierSettings

log = logging.getLogger(__name__)
SERVICE_NAME = retrier_pb2.DESCRIPTOR.services_by_name["Retrier"].full_name
OPERATIONS_SERVICE = "google.longrunning.Operations"
# Requests name at most 500 dead letters, each name at most 1,000 characters: a request
# a few times as large is still refused for what it holds, naming the field.
MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass
class RunningRetrier:
    """A started retrier process: its server, port and live parts."""

    server: grpc.aio.Server
    port: int
    watcher: ConfigWatcher
    scheduler: RetryScheduler
    store: DeadLetterStore
    nats: NatsClient
    metrics_port: int = 0  # where /metrics is served (0: not served)


async def start_retrier(settings: RetrierSettings, stack: AsyncExitStack) -> RunningRetrier:
    """Connect, wire and start a retrier; `stack` stops it gracefully, in reverse order."""
    token = settings.required_service_token("retrier")
    policy = settings.policy()  # invalid backoff settings fail here, at start
    nc, js = await open_streams(
        settings,
        settings.nats_url,
        name=settings.retrier_name,
    )
    stack.push_async_callback(nc.close)
    watcher = ConfigWatcher(settings.registry_addr, token, settings.retrier_name)
    watcher.start()
    stack.push_async_callback(watcher.close)
    scheduler = RetryScheduler(
        nc,
        js,
        watcher,
        policy,
        max_hold=timedelta(seconds=settings.retry_max_hold_seconds),
        unknown_instance_grace=timedelta(seconds=settings.retry_unknown_instance_grace_seconds),
        fetch=settings.retrier_fetch,
        ack_wait=settings.retrier_ack_wait_seconds,
    )
    scheduler.start()
    stack.push_async_callback(scheduler.stop)
    metrics = start_metrics("eventfn-retrier", settings.retrier_metrics_listen, stack)
    count_dead_letters_discarded(metrics.meter, lambda: scheduler.dead_discarded)
    for gauge in (
        BacklogGauges(
            js, metrics.meter, what="retries", stream=streams.RETRY_STREAM, durable=DURABLE
        ),
        StreamSizeGauge(js, metrics.meter, what="dead_letters", stream=streams.DEAD_STREAM),
    ):
        gauge.start()
        stack.push_async_callback(gauge.close)
    gate = RegistryGate(settings.registry_addr, service_token=token)
    stack.push_async_callback(gate.close)
    store = DeadLetterStore(nc, js)
    pages = PageTokens.from_secret(token)
    operations = Operations(js, settings.stream_replicas)
    await operations.open()
    servicer = RetrierServicer(
        store, gate, pages, operations, settings.replay_budget(), LetterIds.from_secret(token)
    )
    stack.push_async_callback(operations.close)
    server, port, health = rpc.create_server(
        address=settings.retrier_listen,
        register=[
            lambda s: retrier_pb2_grpc.add_RetrierServicer_to_server(servicer, s),
            lambda s: operations_pb2_grpc.add_OperationsServicer_to_server(
                OperationsServicer(operations, gate, pages), s
            ),
        ],
        service_names=[SERVICE_NAME, OPERATIONS_SERVICE],
        meter=metrics.meter,
        limits=call_limits.ServerLimits(max_message_bytes=MESSAGE_BYTES),
    )
    await server.start()
    stack.push_async_callback(server.stop, 5)
    await rpc.set_serving(health, [SERVICE_NAME, OPERATIONS_SERVICE])
    await operations.resume(servicer.replay)
    log.info("retrier listening on port %d", port)
    return RunningRetrier(server, port, watcher, scheduler, store, nc, metrics_port=metrics.port)
