"""Idempotent creates and saves (AIP-155): a retry with the same request_id gets the first
call's response, not a second resource.

A request is its caller's: the digest a retry must match covers who sent it (the member, or
the service), so a request_id another member learns answers them REQUEST_ID_REUSED, never
the first call's response (a token's secret, a new write key) that their role may not see.

The response is written in the same transaction as the change it describes, sealed with the
deployment's secret key (a token's secret may be in it), and kept for 24 hours. A retry made
while the first call still runs waits for it (the second insert blocks on the first's key),
then finds the record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import delete, tuple_
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.errors import AlreadyExists, RequestIdReused
from services.common.request_ids import check_request_id
from services.registry.models import RequestRecord
from services.registry.secrets import SEALED_KEY, SecretBox, key_id_of
from services.registry.store import RegistryStore, now

RETENTION = timedelta(hours=24)
# Who sends the data plane's calls (with the deployment's service token), for request keys.
SERVICE_CALLER = "service"
M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class RequestKey:
    """What identifies one client request: workspace, method, request_id; and its digest (of
    the caller and the request without its request_id)."""

    workspace_id: str
    method: str
    request_id: str
    digest: str


def request_key(
    workspace_id: str, caller_id: str, method: str, request: Message
) -> RequestKey | None:
    """Return the key of a request with a request_id (None without one); check the id.

    `caller_id` names who sends it (a member id; the service for the data plane's calls)."""
    request_id = getattr(request, "request_id", "")
    if not request_id:
        return None
    check_request_id(request_id)
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")  # type: ignore[arg-type]
    digest = hashlib.sha256(caller_id.encode() + b"\0")
    digest.update(copy.SerializeToString(deterministic=True))
    return RequestKey(workspace_id, method, request_id.lower(), digest.hexdigest())


class Idempotency:
    """Find and keep the responses of requests made with a request_id."""

    def __init__(self, store: RegistryStore, box: SecretBox) -> None:
        self._store = store
        self._box = box

    def _scope(self, workspace_id: str, method: str, request_id: str) -> tuple[str, str]:
        return f"request:{workspace_id}", f"{method}/{request_id}"

    async def previous(self, key: RequestKey, response_type: type[M]) -> M | None:
        """Return the response of an earlier call with this key, or None."""
        async with self._store.transaction() as s:
            row = await s.get(RequestRecord, (key.workspace_id, key.method, key.request_id))
        if row is None or row.created_at < now() - RETENTION:
            return None
        if row.digest != key.digest:
            raise RequestIdReused(key.method)
        scope, name = self._scope(key.workspace_id, key.method, key.request_id)
        sealed = {SEALED_KEY: row.response.decode()}
        response = response_type()
        opened = await self._box.open(sealed, instance_id=scope, name=name)
        response.ParseFromString(bytes.fromhex(str(opened)))
        return response

    async def save(self, session: AsyncSession, key: RequestKey | None, response: Message) -> None:
        """Keep the response of a call, in the transaction that makes its change."""
        if key is None:
            return
        scope, name = self._scope(key.workspace_id, key.method, key.request_id)
        sealed = await self._box.seal(
            session, response.SerializeToString().hex(), instance_id=scope, name=name
        )
        # The workspace's expired records go (this one's too, should its id come back).
        await session.exec(  # type: ignore[call-overload]
            delete(RequestRecord).where(
                col(RequestRecord.workspace_id) == key.workspace_id,
                col(RequestRecord.created_at) < now() - RETENTION,
            )
        )
        session.add(
            RequestRecord(
                workspace_id=key.workspace_id,
                method=key.method,
                request_id=key.request_id,
                digest=key.digest,
                response=sealed[SEALED_KEY].encode(),
                created_at=now(),
            )
        )
        await session.flush()

    async def reseal(self, key_id: str, batch: int = 100) -> int:
        """Seal every kept response under the data key `key_id`; return how many changed.

        Batch by batch, each one short transaction holding its rows FOR UPDATE.
        """
        await purge_expired(self._store)
        count = 0
        last = ("", "", "")
        pk = (
            col(RequestRecord.workspace_id),
            col(RequestRecord.method),
            col(RequestRecord.request_id),
        )
        while True:
            async with self._store.transaction() as s:
                rows = (
                    await s.exec(
                        select(RequestRecord)
                        .where(tuple_(*pk) > tuple_(*last))
                        .order_by(*pk)
                        .limit(batch)
                        .with_for_update()
                    )
                ).all()
                for row in rows:
                    sealed = {SEALED_KEY: row.response.decode()}
                    if key_id_of(sealed) == key_id:
                        continue
                    scope, name = self._scope(row.workspace_id, row.method, row.request_id)
                    opened = await self._box.open(sealed, instance_id=scope, name=name)
                    again = await self._box.seal(s, opened, instance_id=scope, name=name)
                    row.response = again[SEALED_KEY].encode()
                    s.add(row)
                    count += 1
            if len(rows) < batch:
                return count
            last = (rows[-1].workspace_id, rows[-1].method, rows[-1].request_id)

    async def once(
        self,
        key: RequestKey | None,
        response_type: type[M],
        work: Callable[[], Awaitable[M]],
    ) -> M:
        """Answer a retry with the first response; otherwise do the work (which saves it)."""
        if key is None:
            return await work()
        if (earlier := await self.previous(key, response_type)) is not None:
            return earlier
        try:
            return await work()
        except (IntegrityError, AlreadyExists):
            # A twin with the same request_id committed first (our insert waited for it), or
            # its resource now holds the name: answer what it answered.
            if (earlier := await self.previous(key, response_type)) is not None:
                return earlier
            raise


async def purge_expired(store: RegistryStore) -> int:
    """Drop the records past their retention; return how many."""
    async with store.transaction() as s:
        result = await s.exec(  # type: ignore[call-overload]
            delete(RequestRecord).where(col(RequestRecord.created_at) < now() - RETENTION)
        )
    return result.rowcount or 0
