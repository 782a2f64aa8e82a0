"""Read delivery records: per-minute counts, their sums, and sampled failures of an instance."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.common.deliveries.recorder import COUNTERS

_SUMS = ", ".join(f"coalesce(sum({n}), 0) AS {n}" for n in (*COUNTERS, "execution_ms"))


class DeliveryReads:
    """Queries over the delivery tables, on a connection pool."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self._db = db

    async def minutes(
        self, instance_id: str, begin: datetime, stop: datetime, limit: int
    ) -> list[asyncpg.Record]:
        """Return an instance's minutes in [begin, stop), newest first (keyset: the next page
        is the minutes before the last one returned)."""
        return await self._db.fetch(
            """SELECT * FROM delivery_minute WHERE instance_id = $1 AND minute >= $2
               AND minute < $3 ORDER BY minute DESC LIMIT $4""",
            instance_id,
            begin.replace(second=0, microsecond=0),
            stop,
            limit,
        )

    async def failures(
        self,
        instance_id: str,
        begin: datetime,
        stop: datetime,
        limit: int,
        before: tuple[datetime, int] | None = None,
    ) -> list[asyncpg.Record]:
        """Return an instance's sampled failures in [begin, stop), newest first, those before
        `before` (the time and id of the last one of the previous page) when given."""
        after_time, after_id = before if before is not None else (stop, 2**62)
        return await self._db.fetch(
            """SELECT * FROM delivery_failure WHERE instance_id = $1 AND time >= $2
               AND time < $3 AND (time, id) < ($4, $5) ORDER BY time DESC, id DESC LIMIT $6""",
            instance_id,
            begin,
            stop,
            after_time,
            after_id,
            limit,
        )

    async def totals(self, instance_id: str, begin: datetime, stop: datetime) -> asyncpg.Record:
        """Return the sums of an instance's counters over [begin, stop) (one row, as a minute)."""
        row = await self._db.fetchrow(
            f"SELECT $2::timestamptz AS minute, {_SUMS} FROM delivery_minute "
            "WHERE instance_id = $1 AND minute >= $2 AND minute < $3",
            instance_id,
            begin.replace(second=0, microsecond=0),
            stop,
        )
        assert row is not None  # an aggregate without GROUP BY always has one row
        return row
