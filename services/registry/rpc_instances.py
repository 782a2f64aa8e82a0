"""Registry RPCs of instances: connect a function to a source, read, change, delete."""

from __future__ import annotations

from datetime import timedelta

import grpc
from google.protobuf import duration_pb2
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common import names
from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.registry import convert
from services.registry.auth import Caller, require
from services.registry.deps import RegistryDeps
from services.registry.idempotency import RequestKey, request_key
from services.registry.instance_settings import InstanceSettings, with_settings, without_settings
from services.registry.models import Function, FunctionVersion, Instance, Source
from services.registry.store import new_id, now, unique_violation
from services.registry.validation import (
    check_batching,
    check_filters,
    check_name,
    check_page_size,
    check_retry,
    check_update_mask,
    settings_values,
)

Ctx = grpc.aio.ServicerContext
UPDATABLE = frozenset(
    {
        "display_name",
        "settings",
        "state",
        "batch_size",
        "batch_wait",
        "filters",
        "timeout",
        "retry_window",
        "retry_max_delay",
        "propagate_trace",
    }
)
STATES = {res.Instance.STATE_ENABLED: True, res.Instance.STATE_DISABLED: False}


def milliseconds(field: str, value: duration_pb2.Duration) -> int:
    """Return a Duration in whole milliseconds; INVALID_ARGUMENT when finer or negative."""
    total = value.ToTimedelta()
    if total < timedelta(0) or total % timedelta(milliseconds=1):
        raise InvalidArgument.field(field, "must be a whole, non-negative number of milliseconds")
    return total // timedelta(milliseconds=1)


def seconds(field: str, value: duration_pb2.Duration) -> int:
    """Return a Duration in whole seconds; INVALID_ARGUMENT when finer or negative."""
    if value.seconds < 0 or value.nanos:
        raise InvalidArgument.field(field, "must be a whole, non-negative number of seconds")
    return value.seconds


def enabled_of(field: str, state: int, default: bool) -> bool:
    """Return whether a state means enabled (unset: `default`)."""
    if state == res.Instance.STATE_UNSPECIFIED:
        return default
    if state not in STATES:
        raise InvalidArgument.field(field, "must be STATE_ENABLED or STATE_DISABLED")
    return STATES[state]  # type: ignore[index]


class InstanceRpcs:
    """Instances: create, get, list, update, delete."""

    def __init__(self, deps: RegistryDeps) -> None:
        self.deps = deps
        self.store = deps.store
        self.authn = deps.authn
        self.instances = InstanceSettings(deps)

    def _durations(self, new: res.Instance, given: set[str]) -> dict[str, int | None]:
        """Read the duration fields named in `given` (None when unset: the default)."""
        out: dict[str, int | None] = {}
        if "batch_wait" in given:
            has = new.HasField("batch_wait")
            out["batch_wait"] = milliseconds("instance.batch_wait", new.batch_wait) if has else None
        if "timeout" in given:
            has = new.HasField("timeout")
            out["timeout"] = milliseconds("instance.timeout", new.timeout) if has else None
        for field in ("retry_window", "retry_max_delay"):
            if field in given:
                value = getattr(new, field)
                out[field] = seconds(f"instance.{field}", value) if new.HasField(field) else 0
        return out

    async def CreateInstance(
        self, request: pb.CreateInstanceRequest, context: Ctx
    ) -> pb.CreateInstanceResponse:
        """Connect a function to a source."""
        caller = await self.authn.caller(context)
        names.parent("parent", request.parent, caller.workspace_id)
        new = request.instance
        function_id = names.parse(
            "instance.function", new.function, names.FUNCTION, caller.workspace_id
        )
        source_id = names.parse("instance.source", new.source, names.SOURCE, caller.workspace_id)
        # Before a retry is answered (a member whose roles changed gets none of it).
        require(
            caller.can_admin_source(source_id), "connect functions to this source (Source Admin)"
        )
        require(caller.can_read_function(function_id), "read this function")
        version = (
            names.parse_version("instance.version", new.version, caller.workspace_id)
            if new.version
            else None
        )
        durations = self._durations(
            new, {"batch_wait", "timeout", "retry_window", "retry_max_delay"}
        )
        size, wait, timeout = check_batching(
            new.batch_size or None, durations["batch_wait"], durations["timeout"]
        )
        filters = check_filters(list(new.filters), self.deps.check_filter)
        retry = check_retry(durations["retry_window"] or 0, durations["retry_max_delay"] or 0)
        enabled = enabled_of("instance.state", new.state, True)
        key = request_key(caller.workspace_id, caller.member_id, "CreateInstance", request)
        checked = (function_id, source_id, version, size, wait, timeout, filters, retry, enabled)
        created = await self.deps.idempotency.once(
            key, pb.CreateInstanceResponse, lambda: self._create(caller, request, checked, key)
        )
        await with_settings(self.store, [created.instance])
        return created

    async def _create(
        self,
        caller: Caller,
        request: pb.CreateInstanceRequest,
        checked: tuple,
        key: RequestKey | None,
    ) -> pb.CreateInstanceResponse:
        function_id, source_id, version, size, wait, timeout, filters, retry, enabled = checked
        new = request.instance
        given = settings_values("instance.settings", new.settings)
        instance_id = new_id("ins")
        name = ""
        try:
            async with self.store.transaction() as s:
                await self.deps.lock_deployments(s, caller.workspace_id)
                fn = await self.store.get_in_workspace(
                    s, Function, function_id, caller.workspace_id, "function", name=new.function
                )
                src = await self.store.get_in_workspace(
                    s, Source, source_id, caller.workspace_id, "source", name=new.source
                )
                ver = await self.store.version_to_run(
                    s, fn.latest_version_id if version is None else version[1]
                )
                if version is not None and (
                    ver is None or version[0] != fn.id or ver.function_id != fn.id
                ):
                    raise InvalidArgument.field(
                        "instance.version", "is not a version of instance.function"
                    )
                if ver is None:  # the latest, which a function always has
                    raise NotFound("version", fn.latest_version_id)
                await self.deps.room_for_instance(s, caller.workspace_id)
                await self.deps.room_to_run(s, caller.workspace_id, ver.id)
                name = check_name(
                    "instance.display_name", new.display_name or f"{fn.name} ← {src.name}"
                )
                ins = Instance(
                    id=instance_id,
                    workspace_id=caller.workspace_id,
                    function_id=fn.id,
                    source_id=src.id,
                    version_id=ver.id,
                    name=name,
                    settings=await self.instances.settings_for(
                        s, None, instance_id, ver.settings, given
                    ),
                    enabled=enabled,
                    batch_size=size,
                    batch_wait_ms=wait,
                    timeout_ms=timeout,
                    retry_window_seconds=retry[0],
                    retry_max_delay_seconds=retry[1],
                    filters=filters,
                    propagate_trace=new.propagate_trace,
                    revision=1,
                    created_at=now(),
                    updated_at=now(),
                )
                s.add(ins)
                await s.flush()
                await self.deps.audit(
                    s,
                    caller,
                    "instance.create",
                    "instance",
                    ins.id,
                    {"function": new.function, "source": new.source},
                )
                await self.deps.change_config(s, caller, instances=[ins.id])
                response = pb.CreateInstanceResponse(instance=convert.instance(ins))
                kept = pb.CreateInstanceResponse()
                kept.CopyFrom(response)
                without_settings([kept.instance])
                await self.deps.idempotency.save(s, key, kept)
        except IntegrityError as error:
            if unique_violation(error) and name:
                raise await self._name_taken(
                    caller, name, given_name=bool(new.display_name)
                ) from error
            raise
        return response

    async def _name_taken(self, caller: Caller, name: str, *, given_name: bool) -> AlreadyExists:
        """Describe a taken instance display name, naming the instance that holds it."""
        async with self.store.transaction() as s:
            holder = (
                await s.exec(
                    select(Instance).where(
                        Instance.workspace_id == caller.workspace_id, Instance.name == name
                    )
                )
            ).first()
        holder_name = names.INSTANCE.name(caller.workspace_id, holder.id) if holder else ""
        which = f" ({holder_name})" if holder_name else ""
        how = (
            "pick another display_name"
            if given_name
            else "no display_name was sent, so it was derived from the function and source "
            "names; this function is already connected to this source: send a display_name to "
            "connect it again, or use the existing instance (a retry of the same create should "
            "send the same request_id)"
        )
        error = AlreadyExists(f"an instance named {name!r} already exists{which}: {how}")
        if holder_name:
            error.metadata = {"existing_instance": holder_name, "display_name": name}
        return error

    async def GetInstance(
        self, request: pb.GetInstanceRequest, context: Ctx
    ) -> pb.GetInstanceResponse:
        """Return an instance, secrets masked."""
        caller = await self.authn.caller(context)
        instance_id = names.parse("name", request.name, names.INSTANCE, caller.workspace_id)
        async with self.store.transaction() as s:
            ins = await self.store.get_in_workspace(
                s, Instance, instance_id, caller.workspace_id, "instance", name=request.name
            )
        require(caller.can_read_instance(ins.function_id, ins.source_id), "read this instance")
        return pb.GetInstanceResponse(instance=convert.instance(ins))

    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: Ctx
    ) -> pb.ListInstancesResponse:
        """List instances the caller may read."""
        caller = await self.authn.caller(context)
        names.parent("parent", request.parent, caller.workspace_id)
        size = check_page_size(request.page_size)
        function_id = names.optional(
            "function", request.function, names.FUNCTION, caller.workspace_id
        )
        source_id = names.optional("source", request.source, names.SOURCE, caller.workspace_id)
        query = select(Instance).where(Instance.workspace_id == caller.workspace_id)
        if function_id:
            query = query.where(Instance.function_id == function_id)
        if source_id:
            query = query.where(Instance.source_id == source_id)
        readable = caller.readable_function_ids()
        if readable is not None:
            query = query.where(col(Instance.function_id).in_(sorted(readable)))
        async with self.store.transaction() as s:
            page, token = await self.deps.pages.page(
                s,
                "ListInstances",
                caller.workspace_id,
                request,
                query,
                (col(Instance.created_at), col(Instance.id)),
                size,
            )
        return pb.ListInstancesResponse(
            instances=[convert.instance(r) for r in page], next_page_token=token
        )

    async def UpdateInstance(
        self, request: pb.UpdateInstanceRequest, context: Ctx
    ) -> pb.UpdateInstanceResponse:
        """Change fields of an instance named by the update mask."""
        caller = await self.authn.caller(context)
        paths = check_update_mask(request.update_mask, UPDATABLE)
        new = request.instance
        instance_id = names.parse("instance.name", new.name, names.INSTANCE, caller.workspace_id)
        durations = self._durations(new, paths)
        size, wait, timeout = check_batching(
            new.batch_size if "batch_size" in paths else None,
            durations.get("batch_wait"),
            durations.get("timeout"),
        )
        enabled = enabled_of("instance.state", new.state, True) if "state" in paths else None
        if "state" in paths and new.state == res.Instance.STATE_UNSPECIFIED:
            raise InvalidArgument.field("instance.state", "must be STATE_ENABLED or STATE_DISABLED")
        try:
            async with self.store.transaction() as s:
                ins = await self.instances.locked_instance(
                    s, caller, instance_id, new.etag, name=new.name
                )
                if "settings" in paths:
                    ver = await self.store.get(s, FunctionVersion, ins.version_id, "version")
                    ins.settings = await self.instances.settings_for(
                        s,
                        ins,
                        ins.id,
                        ver.settings,
                        settings_values("instance.settings", new.settings),
                    )
                if enabled is not None:
                    ins.enabled = enabled
                if "batch_size" in paths:
                    ins.batch_size = size
                if "batch_wait" in paths:
                    ins.batch_wait_ms = wait
                if "timeout" in paths:
                    ins.timeout_ms = timeout
                if paths & {"retry_window", "retry_max_delay"}:
                    ins.retry_window_seconds, ins.retry_max_delay_seconds = check_retry(
                        durations.get("retry_window", ins.retry_window_seconds) or 0,
                        durations.get("retry_max_delay", ins.retry_max_delay_seconds) or 0,
                    )
                if "filters" in paths:
                    ins.filters = check_filters(list(new.filters), self.deps.check_filter)
                if "display_name" in paths:
                    ins.name = check_name("instance.display_name", new.display_name)
                if "propagate_trace" in paths:
                    ins.propagate_trace = new.propagate_trace
                ins.revision += 1
                ins.updated_at = now()
                s.add(ins)
                await self.deps.audit(
                    s,
                    caller,
                    "instance.update",
                    "instance",
                    ins.id,
                    {"fields": sorted(paths)},
                )
                await self.deps.change_config(s, caller, instances=[ins.id])
        except IntegrityError as error:
            if unique_violation(error) and "display_name" in paths:
                raise await self._name_taken(caller, new.display_name, given_name=True) from error
            raise
        return pb.UpdateInstanceResponse(instance=convert.instance(ins))

    async def DeleteInstance(
        self, request: pb.DeleteInstanceRequest, context: Ctx
    ) -> pb.DeleteInstanceResponse:
        """Delete an instance."""
        caller = await self.authn.caller(context)
        instance_id = names.parse("name", request.name, names.INSTANCE, caller.workspace_id)
        async with self.store.transaction() as s:
            ins = await self.instances.locked_instance(
                s, caller, instance_id, request.etag, name=request.name
            )
            await s.delete(ins)
            await self.deps.audit(
                s,
                caller,
                "instance.delete",
                "instance",
                ins.id,
                {"name": ins.name},
            )
            await self.deps.change_config(s, caller, instances=[ins.id])
        return pb.DeleteInstanceResponse()
