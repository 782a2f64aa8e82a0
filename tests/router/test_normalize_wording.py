"""A missing or null event field is named as the user sent it, never as Python's None."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from services.router.errors import InvalidEventError
from services.router.normalize import EVENT_TYPES, parse_batch

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
TYPES = ", ".join(sorted(EVENT_TYPES))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"userId": "u"}, f"batch[0]: `type` is missing; use one of {TYPES}"),
        ({"type": None, "userId": "u"}, f"batch[0]: `type` must be one of {TYPES}, got null"),
        ({"type": 3, "userId": "u"}, f"batch[0]: `type` must be one of {TYPES}, got number"),
        ({"type": "buy", "userId": "u"}, f"batch[0]: `type` must be one of {TYPES}, got 'buy'"),
    ],
)
def test_a_missing_or_null_type_is_not_called_none(item: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_batch(orjson.dumps({"batch": [item]}), NOW)
    assert caught.value.message == message
