"""The request_id of a retryable call (AIP-155): a UUID the client picks once per operation."""

from __future__ import annotations

import uuid

from services.common.errors import InvalidArgument


def check_request_id(request_id: str) -> None:
    """Refuse a request_id that is not a UUID."""
    try:
        uuid.UUID(request_id)
    except ValueError:
        raise InvalidArgument.field(
            "request_id", "must be a UUID, e.g. 9b2c1e4e-3f0a-4a53-8c1d-2b7f5f1c0a11"
        ) from None
