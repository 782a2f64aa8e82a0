"""Write delivery records: counts per instance and minute and sampled failures, from executors
(outcomes) and routers (filtered events), kept in memory and written to PostgreSQL in
batches — never one row per event on the hot path."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from services.common import tasks

log = logging.getLogger(__name__)
PURGE_EVERY_SECONDS = 3600.0
# Failure samples kept in memory while the database is away, the newest (each up to ≈ 0.5 MB:
# gathered for an hour's outage, every instance's 20 a minute took gigabytes).
HELD_SAMPLES = 1000
COUNTERS = ("delivered", "retried", "discarded", "failed", "filtered", "invocations")


@dataclass
class MinuteCounts:
    """Counters of one instance in one minute."""

    workspace_id: str
    function_id: str
    delivered: int = 0
    retried: int = 0
    discarded: int = 0
    failed: int = 0
    filtered: int = 0
    invocations: int = 0
    execution_ms: float = 0.0


@dataclass(frozen=True)
class FailureSample:
    """One failed, discarded or retried event with its debugging context."""

    instance_id: str
    time: datetime
    message_id: str
    version_id: str
    outcome: str
    error_type: str
    error_message: str
    error_stack: str
    event: str
    logs: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    trace_id: str = ""  # the event's journey (W3C trace id), "" when unknown
    invocation_events: int = 1  # events of the invocation whose logs and requests these are


def minute_of(moment: datetime) -> datetime:
    """Truncate a time to its minute."""
    return moment.replace(second=0, microsecond=0)


def _storable(value: Any) -> Any:
    """Return a value with its strings as PostgreSQL stores them: NUL, which no text or jsonb
    value may hold (a function's log or error may, as any event's field), as U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    return value


def _storable_record(s: FailureSample) -> tuple[Any, ...]:
    """Return a failure sample as a row of delivery_failure."""
    return (
        s.instance_id,
        s.time,
        _storable(s.message_id),
        s.version_id,
        s.outcome,
        _storable(s.error_type),
        _storable(s.error_message),
        _storable(s.error_stack),
        _storable(s.event),
        _storable(s.logs),
        orjson.dumps(_storable(s.requests)).decode(),
        s.trace_id,
        s.invocation_events,
    )


class DeliveryRecorder:
    """Aggregate outcomes in memory; flush them with one multi-row statement per period."""

    def __init__(
        self,
        dsn: str,
        *,
        flush_seconds: float,
        samples_per_minute: int,
        retention: timedelta | None = timedelta(days=7),
        held_samples: int = HELD_SAMPLES,
    ) -> None:
        self._dsn = dsn
        self._held_samples = held_samples
        self._retention = retention
        self._flush_seconds = flush_seconds
        self._samples_per_minute = samples_per_minute
        self._counts: dict[tuple[str, datetime], MinuteCounts] = {}
        self._samples: list[FailureSample] = []
        self._sampled: defaultdict[tuple[str, datetime], int] = defaultdict(int)
        self._pool: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and start the periodic flush."""
        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=2)
        self._task = asyncio.create_task(self._run(), name="delivery-recorder")

    def count(
        self,
        instance_id: str,
        workspace_id: str,
        function_id: str,
        deltas: dict[str, int],
        *,
        execution_ms: float = 0.0,
        now: datetime | None = None,
    ) -> None:
        """Add to the counters of an instance's current minute."""
        key = (instance_id, minute_of(now or datetime.now(UTC)))
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = MinuteCounts(workspace_id, function_id)
        for name, delta in deltas.items():
            setattr(counts, name, getattr(counts, name) + delta)
        counts.execution_ms += execution_ms

    def sample(self, failure: FailureSample) -> bool:
        """Keep a failure sample unless the instance's minute already has enough."""
        key = (failure.instance_id, minute_of(failure.time))
        if self._sampled[key] >= self._samples_per_minute:
            return False
        self._sampled[key] += 1
        self._samples.append(failure)
        return True

    async def flush(self) -> None:
        """Write what was aggregated since the last flush."""
        counts, self._counts = self._counts, {}
        samples, self._samples = self._samples, []
        horizon = minute_of(datetime.now(UTC)) - timedelta(minutes=2)
        for key in [k for k in self._sampled if k[1] < horizon]:
            del self._sampled[key]
        if (not counts and not samples) or self._pool is None:
            return
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if counts:
                    await conn.executemany(
                        """
                        INSERT INTO delivery_minute (instance_id, minute, workspace_id,
                            function_id, delivered, retried, discarded, failed, filtered,
                            invocations, execution_ms)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                        ON CONFLICT (instance_id, minute) DO UPDATE SET
                            delivered = delivery_minute.delivered + EXCLUDED.delivered,
                            retried = delivery_minute.retried + EXCLUDED.retried,
                            discarded = delivery_minute.discarded + EXCLUDED.discarded,
                            failed = delivery_minute.failed + EXCLUDED.failed,
                            filtered = delivery_minute.filtered + EXCLUDED.filtered,
                            invocations = delivery_minute.invocations + EXCLUDED.invocations,
                            execution_ms = delivery_minute.execution_ms + EXCLUDED.execution_ms
                        """,
                        [
                            (
                                iid,
                                minute,
                                c.workspace_id,
                                c.function_id,
                                *(getattr(c, n) for n in COUNTERS),
                                c.execution_ms,
                            )
                            for (iid, minute), c in counts.items()
                        ],
                    )
                if samples:
                    await conn.copy_records_to_table(
                        "delivery_failure",
                        columns=[
                            "instance_id",
                            "time",
                            "message_id",
                            "version_id",
                            "outcome",
                            "error_type",
                            "error_message",
                            "error_stack",
                            "event",
                            "logs",
                            "requests",
                            "trace_id",
                            "invocation_events",
                        ],
                        records=[_storable_record(s) for s in samples],
                    )
        except (asyncpg.DataError, ValueError, TypeError, OverflowError) as error:
            # A value PostgreSQL (or its encoder here) refuses would be refused at every flush,
            # holding every instance's records back: the samples go, the counts are kept.
            log.error(
                "%d delivery failure samples not written and dropped (%s)", len(samples), error
            )
            self._merge_back(counts)
        except (OSError, asyncpg.PostgresError) as error:
            # Records are statistics: on a database outage, merge them back and retry later.
            log.warning("delivery records not written (%s); keeping them for the next flush", error)
            self._merge_back(counts)
            self._samples[:0] = samples
            dropped = len(self._samples) - self._held_samples
            if dropped > 0:  # the newest are kept
                del self._samples[:dropped]
                log.warning("%d delivery failure samples dropped: the database is away", dropped)

    def _merge_back(self, counts: dict[tuple[str, datetime], MinuteCounts]) -> None:
        """Add counts that were not written to those gathered since, for the next flush."""
        for key, c in counts.items():
            mine = self._counts.setdefault(key, MinuteCounts(c.workspace_id, c.function_id))
            for n in COUNTERS:
                setattr(mine, n, getattr(mine, n) + getattr(c, n))
            mine.execution_ms += c.execution_ms

    async def purge(self, retention: timedelta) -> None:
        """Delete records older than the retention period."""
        if self._pool is None:
            return
        cutoff = datetime.now(UTC) - retention
        async with self._pool.acquire() as conn:
            await conn.execute("DELETE FROM delivery_minute WHERE minute < $1", cutoff)
            await conn.execute("DELETE FROM delivery_failure WHERE time < $1", cutoff)

    async def _run(self) -> None:
        next_purge = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if self._retention is not None and loop.time() >= next_purge:
                try:
                    await self.purge(self._retention)
                except (OSError, asyncpg.PostgresError) as error:
                    log.warning("old delivery records not purged (%s); trying again later", error)
                next_purge = loop.time() + PURGE_EVERY_SECONDS
            await asyncio.sleep(self._flush_seconds)
            try:
                await self.flush()
            except Exception:  # a bug: logged, and the next period flushes again
                log.exception("delivery records not flushed")

    async def close(self) -> None:
        """Flush a last time and disconnect."""
        await tasks.stop(self._task)
        await self.flush()
        if self._pool is not None:
            await self._pool.close()
