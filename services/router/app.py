"""Build and run the router: NATS, config watch, ingestor, HTTP and gRPC servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc
from nats.aio.client import Client as NatsClient

from eventfn_api.router.v1 import router_pb2, router_pb2_grpc
from services.common import call_limits, rpc, streams
from services.common.backlog import BacklogGauges
from services.common.config_watch import ConfigView, ConfigWatcher
from services.common.deliveries.recorder import DeliveryRecorder
from services.common.metrics import start_metrics
from services.common.settings import asyncpg_url
from services.common.streams import open_streams
from services.router.config import RouteTable
from services.router.http_app import TrackingApp
from services.router.http_server import serve_http
from services.router.normalize import BATCH_MAX_BYTES
from services.router.observe import RouterMetrics
from services.router.publisher import Ingestor
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings

log = logging.getLogger(__name__)
SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name


@dataclass
class RunningRouter:
    """A started router: its servers, bound ports and live parts (for tests and metrics)."""

    server: grpc.aio.Server
    grpc_port: int
    http_port: int
    watcher: ConfigWatcher
    ingestor: Ingestor
    nats: NatsClient
    metrics_port: int = 0  # where /metrics is served (0: not served)


class RouteTableHolder:
    """Hold the route table of the latest config revision, rebuilt on each change."""

    def __init__(self) -> None:
        self.table: RouteTable | None = None

    def update(self, view: ConfigView) -> None:
        """Compile the new view, reusing unchanged instances' filters."""
        self.table = RouteTable.build(view, self.table)

    def current(self) -> RouteTable | None:
        """Return the current table, None before the first snapshot."""
        return self.table


async def _close_nats(nc: NatsClient) -> None:
    """Drain the connection when it is up (flushing in-flight publishes), else close it."""
    if nc.is_connected:
        await nc.drain()
    elif not nc.is_closed:
        await nc.close()


def _split_listen(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def start_router(settings: RouterSettings, stack: AsyncExitStack) -> RunningRouter:
    """Connect, wire and start the router; `stack` closes everything in reverse order."""
    token = settings.required_service_token("router")
    metrics = start_metrics("eventfn-router", settings.router_metrics_listen, stack)
    nc, js = await open_streams(
        settings,
        settings.nats_url,
        name=settings.router_name,
        max_pending_publishes=settings.router_max_pending_publishes,
    )
    stack.push_async_callback(_close_nats, nc)

    holder = RouteTableHolder()
    watcher = ConfigWatcher(
        settings.registry_addr,
        token,
        settings.router_name,
        on_change=holder.update,
    )
    watcher.start()
    stack.push_async_callback(watcher.close)

    recorder = None
    if settings.database_url:
        recorder = DeliveryRecorder(
            asyncpg_url(settings.database_url),
            flush_seconds=settings.router_records_flush_seconds,
            samples_per_minute=0,
            retention=None,  # the executors purge old records
        )
        await recorder.start()
        stack.push_async_callback(recorder.close)
    ingestor = Ingestor(
        nc,
        js,
        holder.current,
        pack_bytes=settings.router_pack_bytes,
        publish_timeout=settings.router_publish_timeout_seconds,
        coalesce_window=settings.router_coalesce_window_ms / 1000,
        coalesce_min_rate=settings.router_coalesce_min_rate,
        recorder=recorder,
        budget=settings.store_budget(),
        metrics=RouterMetrics(
            metrics.meter,
            source_owner=watcher.source_workspace,
            instance_owner=watcher.instance_workspace,
        ),
    )
    stack.callback(lambda: log.info("router stopping: %s", ingestor.stats))
    backlog = BacklogGauges(
        js,
        metrics.meter,
        what="events",
        stream=streams.EVENTS_STREAM,
        durable=settings.executor_consumer,
    )
    backlog.start()
    stack.push_async_callback(backlog.close)
    servicer = RouterServicer(ingestor)
    server, grpc_port, health = rpc.create_server(
        address=settings.router_listen,
        register=[lambda s: router_pb2_grpc.add_RouterServicer_to_server(servicer, s)],
        service_names=[SERVICE_NAME],
        meter=metrics.meter,
        limits=call_limits.ServerLimits(
            call_idle_seconds=settings.router_stream_idle_seconds,
            max_waiting_calls=settings.router_grpc_max_waiting_calls,
            # A batch's events and its write key: a compressed request inflates no further.
            max_message_bytes=2 * BATCH_MAX_BYTES,
        ),
    )
    await server.start()
    stack.push_async_callback(server.stop, 5)

    host, port = _split_listen(settings.router_http_listen)
    app = TrackingApp(
        ingestor,
        max_body_bytes=settings.router_max_body_bytes,
        body_timeout=settings.router_http_body_timeout_seconds,
        retry_after=settings.router_retry_after_seconds,
        cors=settings.cors_policy(),
        public_endpoint=settings.public_endpoint(),
    )
    http, http_task, http_port = await serve_http(
        app,
        host,
        port,
        max_connections=settings.router_http_max_connections,
        keepalive_seconds=settings.router_http_keepalive_seconds,
        refuse=app.refuse,
        header_timeout_seconds=settings.router_http_header_timeout_seconds,
        on_header_timeout=lambda: ingestor.count_rejected("timeout"),
    )

    async def stop_http() -> None:
        http.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await http_task

    stack.push_async_callback(stop_http)

    async def mark_serving() -> None:
        # Health says SERVING only once the router can route (first snapshot).
        await watcher.ready.wait()
        await rpc.set_serving(health, [SERVICE_NAME])

    serving = asyncio.create_task(mark_serving())
    stack.callback(serving.cancel)
    log.info("router listening: gRPC port %d, HTTP port %d", grpc_port, http_port)
    return RunningRouter(
        server=server,
        grpc_port=grpc_port,
        http_port=http_port,
        watcher=watcher,
        ingestor=ingestor,
        nats=nc,
        metrics_port=metrics.port,
    )
