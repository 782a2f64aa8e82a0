"""Instances' settings at rest, locking an instance, deploying: used by the instance RPCs, the
deploy RPCs and WatchConfig."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from eventfn_api.registry.v1 import resources_pb2 as res
from services.common import names
from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from services.registry import convert
from services.registry.auth import Caller, require
from services.registry.deps import RegistryDeps
from services.registry.etags import check as check_etag
from services.registry.models import FunctionVersion, Instance
from services.registry.secrets import is_sealed, key_id_of
from services.registry.store import RegistryStore, now
from services.registry.validation import check_setting_values

log = logging.getLogger(__name__)


def without_settings(instances: Iterable[res.Instance]) -> None:
    """Clear instances' settings from a response as its request record keeps it: the instance
    holds them; kept in each record too, for a day, 250 KB of settings made a record of 668 KB
    (sealed), a create-and-delete loop 6.7 MB a second."""
    for instance in instances:
        instance.ClearField("settings")


async def with_settings(store: RegistryStore, instances: Sequence[res.Instance]) -> None:
    """Give instances of a response (a retry's, from its record) their settings again, as
    they are now (encrypted values masked); an instance deleted since has none to give."""
    missing = {names.last(i.name): i for i in instances if not i.HasField("settings")}
    if not missing:
        return
    async with store.transaction() as s:
        rows = await s.exec(select(Instance).where(col(Instance.id).in_(list(missing))))
        for row in rows.all():
            missing[row.id].settings.CopyFrom(convert.instance(row).settings)


class InstanceSettings:
    """Settings at rest (sealed secrets), instance locks and the deploy step."""

    def __init__(self, deps: RegistryDeps) -> None:
        self.deps = deps

    async def open_settings(self, ins: Instance) -> dict[str, Any]:
        """Return an instance's settings with encrypted values decrypted."""
        box = self.deps.secrets
        return {
            k: await box.open(v, instance_id=ins.id, name=k) if is_sealed(v) else v
            for k, v in ins.settings.items()
        }

    async def _readable(self, ins: Instance) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return an instance's settings decrypted as `open_settings` does, and apart, as
        stored, those no key decrypts (sealed by hand, or under a key that is gone)."""
        box = self.deps.secrets
        opened: dict[str, Any] = {}
        unreadable: dict[str, Any] = {}
        for k, v in ins.settings.items():
            try:
                opened[k] = await box.open(v, instance_id=ins.id, name=k) if is_sealed(v) else v
            except ValueError as error:
                log.warning("%s; kept as it is until a value is given for it", error)
                unreadable[k] = v
        return opened, unreadable

    async def seal_settings(
        self,
        s: AsyncSession,
        instance_id: str,
        schema: list[dict],
        values: dict[str, Any],
        still_secret: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """Return settings to store: encrypted ones sealed to the instance.

        `still_secret` names values that were sealed before: they stay sealed even when a
        newer version no longer marks the setting encrypted, so no deploy reveals a secret.
        """
        secret = {s["name"] for s in schema if s["encrypted"]} | still_secret
        box = self.deps.secrets
        return {
            k: await box.seal(s, v, instance_id=instance_id, name=k) if k in secret else v
            for k, v in values.items()
        }

    async def reseal(self, s: AsyncSession, ins: Instance, key_id: str) -> int:
        """Seal an instance's encrypted values under the data key `key_id`; count them.

        Values and revision stay as they are (the etag too): only their sealing changes.
        """
        box = self.deps.secrets
        settings = dict(ins.settings)
        for name, value in ins.settings.items():
            if is_sealed(value) and key_id_of(value) != key_id:
                try:
                    opened = await box.open(value, instance_id=ins.id, name=name)
                except ValueError as error:
                    raise FailedPrecondition(
                        f"{error}: no key can re-seal it; the old keys are kept and every other "
                        "value is readable. Give the setting again (UpdateInstance) or delete "
                        "the instance, then rotate again"
                    ) from error
                settings[name] = await box.seal(s, opened, instance_id=ins.id, name=name)
        changed = sum(1 for name in settings if settings[name] is not ins.settings[name])
        if changed:
            ins.settings = settings
            s.add(ins)
        return changed

    async def settings_for(
        self,
        s: AsyncSession,
        ins: Instance | None,
        instance_id: str,
        schema: list[dict],
        given: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """Validate new or carried-over values against `schema` and seal them.

        An encrypted value no key decrypts stays as it is (a key restored later reads it)
        until a value is given for it: its instance can be changed, and repaired.
        """
        current, unreadable = await self._readable(ins) if ins else ({}, {})
        kept = frozenset(k for k, v in (ins.settings if ins else {}).items() if is_sealed(v))
        declared = {d["name"] for d in schema}
        if given is None:  # no new values: the current ones must fit the schema
            values = {k: v for k, v in current.items() if k in declared}
            values = check_setting_values(schema, values, kept_secrets=frozenset(unreadable))
        else:
            values = check_setting_values(schema, given, kept_secrets=kept)
            # A masked or absent value keeps the stored secret, encrypted by this version's
            # schema or still sealed from an earlier one's (it reads masked all the same).
            for name in kept & declared:
                if name not in values and name in current:
                    values[name] = current[name]
        sealed = await self.seal_settings(s, instance_id, schema, values, kept)
        for name in declared & unreadable.keys():
            sealed.setdefault(name, unreadable[name])
        return sealed

    async def locked_instance(
        self, s, caller: Caller, instance_id: str, etag: str, *, name: str
    ) -> Instance:
        """Lock an instance of the caller's workspace the caller may change; check its etag."""
        ins = await s.get(Instance, instance_id, with_for_update=True)
        if ins is None or ins.workspace_id != caller.workspace_id:
            raise NotFound("instance", name)
        require(
            caller.can_admin_source(ins.source_id), "change instances of this source (Source Admin)"
        )
        check_etag("instance", ins.id, ins.revision, etag)
        return ins

    async def deploy(
        self,
        s: AsyncSession,
        ins: Instance,
        ver: FunctionVersion,
        changes: Mapping[str, Any] | None = None,
    ) -> None:
        """Move an instance to a version, with setting values changed in the same step.

        Settings `changes` does not name keep their current values (those the version still
        declares); a named one takes the given value, which must fit the version's schema.
        """
        if changes is None:
            ins.settings = await self.settings_for(s, ins, ins.id, ver.settings, None)
        else:
            declared = {x["name"] for x in ver.settings}
            current, _ = await self._readable(ins)
            values = {k: v for k, v in current.items() if k in declared}
            values.update(changes)
            ins.settings = await self.settings_for(s, ins, ins.id, ver.settings, values)
        ins.version_id = ver.id
        ins.revision += 1
        ins.updated_at = now()
        s.add(ins)


def with_prefix(error: InvalidArgument, prefix: str, message: str) -> InvalidArgument:
    """Return the error with each violation's field under `prefix` and a new message."""
    return InvalidArgument(
        message,
        [FieldViolation(f"{prefix}{v.field}", v.description) for v in error.violations],
    )
