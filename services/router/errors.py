"""Domain errors of the router's pure logic: ingestion input and destination filters."""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error the router's pure logic raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(RouterError):
    """Refuse a tracking request whose body is not acceptable (HTTP 400).

    `index` names the offending event of a batch (0-based) and `field` the offending
    field, when the error is about one event; the whole request is refused either way.
    """

    def __init__(self, message: str, *, index: int | None = None, field: str | None = None) -> None:
        self.reason = message  # without the event's position, for per-event reports
        if index is not None:
            message = f"batch[{index}]: {message}"
        super().__init__(message)
        self.index = index
        self.field = field


class MalformedJsonError(InvalidRequestError):
    """Refuse a body that is not valid JSON; `line`/`column` locate the fault (1-based)."""

    def __init__(self, message: str, *, line: int, column: int) -> None:
        super().__init__(f"body is not valid JSON: {message} at line {line}, column {column}")
        self.line = line
        self.column = column


class NestingTooDeepError(InvalidRequestError):
    """Refuse JSON nested deeper than the router accepts."""

    def __init__(self, limit: int, *, index: int | None = None, field: str | None = None) -> None:
        super().__init__(
            f"JSON nests deeper than {limit} levels; flatten the payload", index=index, field=field
        )
        self.limit = limit


class InvalidEventError(InvalidRequestError):
    """Refuse an event that breaks the tracking spec (missing identity, wrong type...)."""


class BodyTooLargeError(InvalidRequestError):
    """Refuse a request body (after decompression) larger than the endpoint's limit."""

    def __init__(self, limit: int, *, decompressed: bool = False) -> None:
        what = "decompressed body" if decompressed else "body"
        super().__init__(f"{what} is larger than the {limit // 1024} KB limit of this endpoint")
        self.limit = limit


class EventTooLargeError(InvalidRequestError):
    """Refuse a request holding an event larger than the per-event limit."""

    def __init__(
        self, size: int, limit: int, *, index: int | None = None, merged: bool = False
    ) -> None:
        shared = " with the batch's context and integrations merged" if merged else ""
        super().__init__(
            f"event is {size} bytes{shared}, larger than the {limit // 1024} KB per-event limit",
            index=index,
        )
        self.size = size
        self.limit = limit


class UnsupportedEncodingError(RouterError):
    """Refuse a Content-Encoding the router cannot decode (HTTP 415)."""

    def __init__(self, encoding: str) -> None:
        super().__init__(
            f"Content-Encoding {encoding!r} is not supported; send gzip or an uncompressed body"
        )
        self.encoding = encoding


class CorruptBodyError(InvalidRequestError):
    """Refuse a body whose declared compression cannot be decoded."""
