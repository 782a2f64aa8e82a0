"""Work waiting in JetStream, as gauges operators alert and autoscale on.

A poller reads a durable consumer's state every few seconds (the gauge callbacks of the
metrics SDK are synchronous; they report the last reading): messages not yet delivered,
delivered but not acknowledged, and the age of the oldest one not acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from nats.js import JetStreamContext
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from services.common import tasks
from services.common.pull import NATS_ERRORS

log = logging.getLogger(__name__)


@dataclass
class Backlog:
    """One reading of a consumer's backlog (messages; seconds)."""

    waiting: int = 0
    in_flight: int = 0
    oldest_age: float = 0.0


async def read_backlog(js: JetStreamContext, stream: str, durable: str) -> Backlog:
    """Read a durable consumer's backlog; an unknown consumer has none."""
    info = await js.consumer_info(stream, durable)
    waiting = info.num_pending or 0
    in_flight = info.num_ack_pending or 0
    age = 0.0
    if waiting or in_flight:
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        with contextlib.suppress(*NATS_ERRORS):  # the message may just have expired
            oldest = await js.get_msg(stream, floor + 1)
            if oldest.time is not None:
                age = max(0.0, time.time() - oldest.time.timestamp())
    return Backlog(waiting, in_flight, age)


class _Poller:
    """Reads something every `every` seconds into `latest` (gauge callbacks report it)."""

    def __init__(self, name: str, every: float) -> None:
        self._name = name
        self._every = every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling."""
        self._task = asyncio.get_running_loop().create_task(self._poll(), name=self._name)

    async def close(self) -> None:
        """Stop polling."""
        await tasks.stop(self._task)

    async def _read(self) -> None:
        raise NotImplementedError

    async def _poll(self) -> None:
        while True:
            try:
                await self._read()
            except NATS_ERRORS as error:  # consumer or stream not created yet, or NATS away
                log.debug("%s unknown: %r", self._name, error)
            await asyncio.sleep(self._every)


class BacklogGauges(_Poller):
    """Gauges `eventfn.<what>.waiting`, `.in_flight` and `.oldest_age` of one consumer."""

    def __init__(
        self,
        js: JetStreamContext,
        meter: Meter,
        *,
        what: str,
        stream: str,
        durable: str,
        every: float = 2.0,
    ) -> None:
        super().__init__(f"backlog of {stream}/{durable}", every)
        self._js, self._stream, self._durable = js, stream, durable
        self.latest = Backlog()
        where = {"messaging.destination.name": stream, "messaging.consumer.group.name": durable}

        def gauge(name: str, unit: str, description: str, read: str) -> None:
            def observe(_options: CallbackOptions) -> Iterable[Observation]:
                return [Observation(getattr(self.latest, read), where)]

            meter.create_observable_gauge(
                f"eventfn.{what}.{name}", callbacks=[observe], unit=unit, description=description
            )

        gauge("waiting", "{message}", f"{what} not yet delivered to a consumer", "waiting")
        gauge("in_flight", "{message}", f"{what} delivered, not yet acknowledged", "in_flight")
        gauge("oldest_age", "s", f"age of the oldest {what} not yet acknowledged", "oldest_age")

    async def _read(self) -> None:
        self.latest = await read_backlog(self._js, self._stream, self._durable)


class StreamSizeGauge(_Poller):
    """A gauge `eventfn.<what>` of the messages a stream holds (e.g. dead letters)."""

    def __init__(
        self, js: JetStreamContext, meter: Meter, *, what: str, stream: str, every: float = 5.0
    ) -> None:
        super().__init__(f"size of {stream}", every)
        self._js, self._stream = js, stream
        self.latest = 0

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(self.latest, {"messaging.destination.name": stream})]

        meter.create_observable_gauge(
            f"eventfn.{what}", callbacks=[observe], unit="{message}", description=f"{what} held"
        )

    async def _read(self) -> None:
        self.latest = (await self._js.stream_info(self._stream)).state.messages
