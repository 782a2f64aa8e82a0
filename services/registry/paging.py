"""Keyset pages of the registry's lists, with opaque signed tokens (see page_tokens).

A page is the items after the last one of the previous page in the list's order (a unique
sort key: creation time and id, or a number), never an offset: writes between two pages
neither repeat nor skip an item that existed throughout.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import tuple_
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.errors import InvalidArgument
from services.common.page_tokens import PageTokens


def _encode(value: Any) -> Any:
    return {"t": value.isoformat()} if isinstance(value, datetime) else value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        return datetime.fromisoformat(value["t"])
    return value


class Pages:
    """Run list queries one keyset page at a time."""

    def __init__(self, tokens: PageTokens) -> None:
        self.tokens = tokens

    async def page(
        self,
        session: AsyncSession,
        method: str,
        scope: str,
        request: Message,
        query: Any,
        columns: tuple[Any, ...],
        size: int,
        *,
        descending: bool = False,
    ) -> tuple[list[Any], str]:
        """Return one page of `query` ordered by `columns` (a unique key) and the next token."""
        after = self.tokens.read(method, scope, request)
        if after is not None:
            if len(after) != len(columns):
                raise InvalidArgument.field("page_token", "is not a token of this list")
            key = tuple_(*columns)
            bound = tuple_(*[_decode(v) for v in after])
            query = query.where(key < bound if descending else key > bound)
        order = [c.desc() for c in columns] if descending else list(columns)
        rows = list((await session.exec(query.order_by(*order).limit(size + 1))).all())
        if len(rows) <= size:
            return rows, ""
        last = rows[size - 1]
        key_values = [_encode(getattr(last, c.key)) for c in columns]
        return rows[:size], self.tokens.issue(method, scope, request, key_values)
