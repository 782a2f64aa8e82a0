"""RotateSecretKey: every encrypted value re-sealed under a new data key, the old keys deleted.

The steps, each in short transactions, so instances keep working and changes keep being made:
1. switch: the current data key becomes "retiring" and a new one "current". Locking the old
   row FOR UPDATE waits for every transaction sealing under it (they hold it FOR SHARE), and
   every later one, on any replica, seals under the new key.
2. re-seal: instances and kept request responses, batch by batch with their rows FOR UPDATE
   (a concurrent UpdateInstance waits for its batch, then changes the re-sealed row).
3. finish: check in SQL that no value is sealed under anything but the new key, delete the
   retiring keys and write the audit entries, in one transaction.
An interrupted rotation leaves retiring keys that still open their values; the next rotation
retires and deletes them too. One rotation at a time: a PostgreSQL advisory lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
from sqlalchemy import text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common.errors import Aborted, FailedPrecondition
from services.registry import convert
from services.registry.auth import Caller, require
from services.registry.deps import RegistryDeps
from services.registry.instance_settings import InstanceSettings
from services.registry.models import Instance, SecretKey
from services.registry.secrets import RETIRING, sealed_prefix

log = logging.getLogger(__name__)
Ctx = grpc.aio.ServicerContext
BATCH = 100
# Any constant works; it only has to be the same in every registry replica.
ROTATION_LOCK = 0x6576_656E_726F_7461
# Sealed values, over instances' settings and kept responses, not under the key `prefix` names.
_LEFT_OVER = text(
    "SELECT (SELECT count(*) FROM instance, jsonb_each(settings) AS e(name, value)"
    "        WHERE jsonb_typeof(e.value) = 'object' AND e.value->>'$sealed' IS NOT NULL"
    "          AND left(e.value->>'$sealed', :n) <> :prefix)"
    "     + (SELECT count(*) FROM request_record"
    "        WHERE left(convert_from(response, 'UTF8'), :n) <> :prefix)"
)


@dataclass
class Resealed:
    """What a rotation re-sealed: per workspace, instances and setting values; responses."""

    instances: Counter[str] = field(default_factory=Counter)
    settings: Counter[str] = field(default_factory=Counter)
    requests: int = 0


class KeyRpcs:
    """Rotation of the data key sealing encrypted values."""

    def __init__(self, deps: RegistryDeps) -> None:
        self.deps = deps
        self.store = deps.store
        self.authn = deps.authn
        self.box = deps.secrets
        self.instances = InstanceSettings(deps)
        self._running: set[asyncio.Task] = set()

    async def RotateSecretKey(
        self, request: pb.RotateSecretKeyRequest, context: Ctx
    ) -> pb.RotateSecretKeyResponse:
        """Re-seal every encrypted value under a new data key; delete the old data keys."""
        caller = await self.authn.caller(context)
        require(caller.bootstrap, "rotate the secret key (only the bootstrap administrator may)")
        # A caller giving up (deadline, Ctrl-C) does not stop a rotation half-way.
        task = asyncio.ensure_future(self._rotate(caller))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)

    async def _rotate(self, caller: Caller) -> pb.RotateSecretKeyResponse:
        async with self._exclusive():
            key_id = await self._switch()
            done = Resealed()
            for _ in range(2):  # a second pass catches what a lagging writer sealed meanwhile
                await self._reseal_instances(key_id, done)
                done.requests += await self.deps.idempotency.reseal(key_id, BATCH)
                if not await self._left_over(key_id):
                    break
            else:
                raise FailedPrecondition(
                    "encrypted values are still being sealed under an old data key (a registry "
                    "replica of an earlier release?); the old keys are kept and every value is "
                    "readable: upgrade every replica, then rotate again"
                )
            response = await self._finish(caller, key_id, done)
        self.box.forget(list(response.retired_key_ids))
        log.info(
            "secret key rotated to %s; retired %s; re-sealed %d settings of %d instances, "
            "%d responses",
            key_id,
            list(response.retired_key_ids),
            response.resealed_setting_count,
            response.resealed_instance_count,
            response.resealed_request_count,
        )
        return response

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """Hold the rotation lock (on its own connection) or raise Aborted."""
        async with self.store.engine.connect() as conn:
            lock = {"k": ROTATION_LOCK}
            got = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), lock)).scalar()
            await conn.commit()
            if not got:
                raise Aborted("another secret key rotation is running; wait for it to finish")
            try:
                yield
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), lock)
                await conn.commit()

    async def _switch(self) -> str:
        """Retire every data key and make a new current one; return its id."""
        async with self.store.transaction() as s:
            rows = list((await s.exec(select(SecretKey).with_for_update())).all())
            for row in rows:
                row.state = RETIRING
                s.add(row)
            await s.flush()  # the old current retires before the new one exists: one current
            new = self.box.new_key()
            s.add(new)
        return new.id

    async def _reseal_instances(self, key_id: str, done: Resealed) -> None:
        last = ""
        while True:
            async with self.store.transaction() as s:
                rows = (
                    await s.exec(
                        select(Instance)
                        .where(col(Instance.id) > last)
                        .order_by(col(Instance.id))
                        .limit(BATCH)
                        .with_for_update()
                    )
                ).all()
                for ins in rows:
                    if changed := await self.instances.reseal(s, ins, key_id):
                        done.instances[ins.workspace_id] += 1
                        done.settings[ins.workspace_id] += changed
            if len(rows) < BATCH:
                return
            last = rows[-1].id

    async def _left_over(self, key_id: str) -> int:
        async with self.store.transaction() as s:
            return await self._left_over_in(s, key_id)

    async def _finish(
        self, caller: Caller, key_id: str, done: Resealed
    ) -> pb.RotateSecretKeyResponse:
        """Delete the retired keys and audit the rotation, once nothing is sealed under them."""
        async with self.store.transaction() as s:
            retired = list(
                (
                    await s.exec(
                        select(SecretKey).where(col(SecretKey.state) == RETIRING).with_for_update()
                    )
                ).all()
            )
            retired_ids = sorted(row.id for row in retired)
            for row in retired:
                await s.delete(row)
            # Nothing of an old key may have appeared since the check: a writer seals only
            # under the current key, and the retiring rows are locked now.
            if await self._left_over_in(s, key_id):
                raise Aborted("values appeared under an old data key; rotate again")
            common = {"key": key_id, "retired_keys": retired_ids}
            entry = await self.deps.audit(
                s,
                caller,
                "secret_key.rotate",
                "secret_key",
                key_id,
                common
                | {
                    "master_key": self.box.master.id,
                    "instances_total": sum(done.instances.values()),
                    "settings_total": sum(done.settings.values()),
                    "requests_total": done.requests,
                    "instances": done.instances[caller.workspace_id],
                    "settings": done.settings[caller.workspace_id],
                },
            )
            for workspace_id, count in sorted(done.instances.items()):
                if workspace_id != caller.workspace_id:
                    self.store.audit(
                        s,
                        workspace_id=workspace_id,
                        actor=None,
                        action="secret_key.rotate",
                        resource_type="secret_key",
                        resource_id=key_id,
                        details=common
                        | {"instances": count, "settings": done.settings[workspace_id]},
                    )
            await s.flush()
            event = convert.audit_event(entry)
        return pb.RotateSecretKeyResponse(
            key_id=key_id,
            retired_key_ids=retired_ids,
            resealed_instance_count=sum(done.instances.values()),
            resealed_setting_count=sum(done.settings.values()),
            resealed_request_count=done.requests,
            event=event,
        )

    async def _left_over_in(self, s: AsyncSession, key_id: str) -> int:
        """Count the sealed values not under the data key `key_id`."""
        prefix = sealed_prefix(key_id)
        conn = await s.connection()
        result = await conn.execute(_LEFT_OVER, {"n": len(prefix), "prefix": prefix})
        return int(result.scalar_one())
