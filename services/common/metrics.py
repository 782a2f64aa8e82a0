"""Metrics of a service: an OpenTelemetry meter, scrapeable as Prometheus text on its own port
and exported by OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_METRICS_ENDPOINT`) is set.

Each service builds its own meter provider and Prometheus registry (several services may run
in one test process) and hands the meter to what records metrics; nothing is global.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, make_server

from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer


@dataclass
class ServiceMetrics:
    """A service's meter and where its Prometheus text is served (port 0: not served)."""

    meter: Meter
    port: int = 0


class Tally:
    """A counter kept as running sums in this process and read when metrics are collected
    (an observable counter, exported like any counter). Adding is a dict update: the SDK's
    `Counter.add` hashes the attributes and takes locks, ≈ 4 µs a call, several calls per
    request on the data path.

    `live`, given, tells whether the object its first attribute names (an instance) still
    exists: the sums of one that does not are forgotten when metrics are collected (a tenant
    creating and deleting instances filled the metric's series for the process's lifetime, and
    past the SDK's 2,000 every other instance's counts went to one overflow series)."""

    def __init__(
        self,
        meter: Meter,
        name: str,
        *,
        unit: str,
        description: str,
        attributes: tuple[str, ...],
        live: Callable[[str], bool] | None = None,
    ) -> None:
        self._names = attributes
        self._live = live
        self._sums: dict[tuple[str | bool, ...], int] = {}
        meter.create_observable_counter(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    def add(self, amount: int, *values: str | bool) -> None:
        """Add to the sum of these attribute values (one per attribute name, in order)."""
        self._sums[values] = self._sums.get(values, 0) + amount

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        # The collector's thread reads while the event loop adds: copy the items first.
        items = list(self._sums.items())
        if self._live is not None:
            kept = []
            for values, total in items:
                if self._live(str(values[0])):
                    kept.append((values, total))
                else:
                    self._sums.pop(values, None)
            items = kept
        return [
            Observation(total, dict(zip(self._names, values, strict=True)))
            for values, total in items
        ]


def split_listen(listen: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 in brackets) into its parts."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def start_metrics(service: str, listen: str | None, stack: AsyncExitStack) -> ServiceMetrics:
    """Build the service's meter; serve /metrics on `listen` (`host:port`) unless it is empty."""
    readers: list[MetricReader] = []
    port = 0
    if listen:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        registry = CollectorRegistry()
        readers.append(PrometheusMetricReader(registry=registry, disable_target_info=True))
        host, wanted = split_listen(listen)
        try:
            server = _serve_scrapes(host, wanted, registry)
        except OSError as error:
            variable = f"EVENTFN_{service.removeprefix('eventfn-').upper()}_METRICS_LISTEN"
            raise OSError(
                f"cannot serve metrics on {listen} ({error.strerror}): choose a free address "
                f"({variable}), or set it empty to serve none"
            ) from error
        stack.callback(server.stop)
        port = server.server_port
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if not readers:
        return ServiceMetrics(NoOpMeterProvider().get_meter(service))
    provider = MeterProvider(
        metric_readers=readers, resource=Resource.create({"service.name": service})
    )
    stack.callback(provider.shutdown)
    return ServiceMetrics(provider.get_meter(service), port)


class _Quiet(WSGIRequestHandler):
    """Answer scrapes without a log line each."""

    def log_message(self, format: str, *args: object) -> None:
        """Log nothing."""


class _ScrapeServer(ThreadingWSGIServer):
    """prometheus_client's scrape server (a thread per scrape), served from its own daemon
    thread that sleeps until a scrape or `stop` comes: the library's `serve_forever` wakes
    every half second to look whether it should stop, and a stop waits for it."""

    timeout = 0  # `handle_request` only looks: the loop has seen the socket readable

    def serve(self) -> None:
        """Serve scrapes from a daemon thread until `stop`."""
        self._stopping = False
        self._wake, self._waker = socket.socketpair()
        self._thread = threading.Thread(target=self._loop, name="metrics", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self and not self._stopping:
                        self.handle_request()

    def stop(self) -> None:
        """Stop serving and close the socket (the port is free again)."""
        self._stopping = True
        self._waker.send(b"\0")
        self._thread.join()
        self.server_close()
        self._wake.close()
        self._waker.close()


def _serve_scrapes(host: str, port: int, registry: CollectorRegistry) -> _ScrapeServer:
    """Serve the registry's Prometheus text on `host:port` (IPv4 or IPv6, as it resolves)."""
    family, _, _, _, where = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    server_class = type("ScrapeServer", (_ScrapeServer,), {"address_family": family})
    server = make_server(str(where[0]), port, make_wsgi_app(registry), server_class, _Quiet)
    server.serve()
    return server


def status_class(status: int | None) -> str:
    """Name an HTTP status's class (`2xx` … `5xx`), or `error` when there was no response."""
    return f"{status // 100}xx" if status else "error"
