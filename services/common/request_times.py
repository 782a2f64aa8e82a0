"""The times a request names: protobuf Timestamps read as datetimes, or refused naming the
field (a Timestamp holds seconds and nanos a datetime cannot: INTERNAL, logged, before)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from services.common.errors import InvalidArgument


def request_time(field: str, value: timestamp_pb2.Timestamp) -> datetime:
    """Return a request's Timestamp as an aware datetime in UTC, or raise INVALID_ARGUMENT
    naming the field when it is not a valid time of the years 1 to 9999."""
    try:
        return value.ToDatetime(tzinfo=UTC)
    except ValueError as error:
        raise InvalidArgument.field(field, f"is not a valid time: {error}") from None
