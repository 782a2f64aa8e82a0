"""Registry RPCs of instances: connect a function to a source, read, change, delete."""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common.errors import AlreadyExists, InvalidArgument
from services.registry import convert
from services.registry.auth import Caller, require
from services.registry.deps import RegistryDeps, audit
from services.registry.idempotency import RequestKey, request_key
from services.registry.instance_settings import InstanceSettings
from services.registry.models import Function, FunctionVersion, Instance, Source
from services.registry.store import new_id, now, unique_violation
from services.registry.validation import (
    check_batching,
    check_filters,
    check_name,
    check_page_size,
    check_retry,
    required,
)

Ctx = grpc.aio.ServicerContext
UPDATABLE = frozenset(
    {
        "settings",
        "enabled",
        "batch_size",
        "batch_wait_ms",
        "filters",
        "timeout_ms",
        "name",
        "retry_window_seconds",
        "retry_max_delay_seconds",
    }
)


class InstanceRpcs:
    """Instances: create, get, list, update, delete."""

    def __init__(self, deps: RegistryDeps) -> None:
        self.deps = deps
        self.store = deps.store
        self.authn = deps.authn
        self.instances = InstanceSettings(deps)

    async def CreateInstance(
        self, request: pb.CreateInstanceRequest, context: Ctx
    ) -> pb.CreateInstanceResponse:
        """Connect a function to a source."""
        caller = await self.authn.caller(context)
        required("function_id", request.function_id)
        required("source_id", request.source_id)
        size, wait, timeout = check_batching(
            request.batch_size if request.HasField("batch_size") else None,
            request.batch_wait_ms if request.HasField("batch_wait_ms") else None,
            request.timeout_ms if request.HasField("timeout_ms") else None,
        )
        filters = check_filters(list(request.filters), self.deps.check_filter)
        retry_window, retry_max_delay = check_retry(
            request.retry_window_seconds, request.retry_max_delay_seconds
        )
        key = request_key(caller.workspace_id, "CreateInstance", request)
        checked = (size, wait, timeout, filters, retry_window, retry_max_delay)
        return await self.deps.idempotency.once(
            key, pb.CreateInstanceResponse, lambda: self._create(caller, request, checked, key)
        )

    async def _create(
        self,
        caller: Caller,
        request: pb.CreateInstanceRequest,
        checked: tuple,
        key: RequestKey | None,
    ) -> pb.CreateInstanceResponse:
        size, wait, timeout, filters, retry_window, retry_max_delay = checked
        given = json_format.MessageToDict(request.settings)
        instance_id = new_id("ins")
        name = ""
        try:
            async with self.store.transaction() as s:
                fn = await self.store.get_in_workspace(
                    s, Function, request.function_id, caller.workspace_id, "function"
                )
                src = await self.store.get_in_workspace(
                    s, Source, request.source_id, caller.workspace_id, "source"
                )
                require(
                    caller.can_admin_source(src.id),
                    "connect functions to this source (Source Admin)",
                )
                require(caller.can_read_function(fn.id), "read this function")
                ver = await self.store.get(
                    s, FunctionVersion, request.version_id or fn.latest_version_id, "version"
                )
                if ver.function_id != fn.id:
                    raise InvalidArgument.field("version_id", "is not a version of this function")
                name = check_name("name", request.name or f"{fn.name} ← {src.name}")
                ins = Instance(
                    id=instance_id,
                    workspace_id=caller.workspace_id,
                    function_id=fn.id,
                    source_id=src.id,
                    version_id=ver.id,
                    name=name,
                    settings=self.instances.settings_for(None, instance_id, ver.settings, given),
                    enabled=request.enabled if request.HasField("enabled") else True,
                    batch_size=size,
                    batch_wait_ms=wait,
                    timeout_ms=timeout,
                    retry_window_seconds=retry_window,
                    retry_max_delay_seconds=retry_max_delay,
                    filters=filters,
                    revision=1,
                    created_at=now(),
                    updated_at=now(),
                )
                s.add(ins)
                await s.flush()
                await audit(
                    self.store,
                    s,
                    caller,
                    "instance.create",
                    "instance",
                    ins.id,
                    {"function_id": fn.id, "source_id": src.id, "version_id": ver.id},
                )
                await self.store.bump_config(s)
                response = pb.CreateInstanceResponse(instance=convert.instance(ins))
                await self.deps.idempotency.save(s, key, response)
        except IntegrityError as error:
            if unique_violation(error) and name:
                raise await self._name_taken(caller, name, given_name=bool(request.name)) from error
            raise
        return response

    async def _name_taken(self, caller: Caller, name: str, *, given_name: bool) -> AlreadyExists:
        """Describe a taken instance name, naming the instance that holds it."""
        async with self.store.transaction() as s:
            holder = (
                await s.exec(
                    select(Instance).where(
                        Instance.workspace_id == caller.workspace_id, Instance.name == name
                    )
                )
            ).first()
        which = f" ({holder.id})" if holder is not None else ""
        how = (
            "pick another name"
            if given_name
            else "no name was sent, so it was derived from the function and source names; "
            "this function is already connected to this source: send a name to connect it "
            "again, or use the existing instance (a retry of the same create should send the "
            "same request_id)"
        )
        error = AlreadyExists(f"an instance named {name!r} already exists{which}: {how}")
        if holder is not None:
            error.metadata = {"existing_instance_id": holder.id, "name": name}
        return error

    async def GetInstance(
        self, request: pb.GetInstanceRequest, context: Ctx
    ) -> pb.GetInstanceResponse:
        """Return an instance, secrets masked."""
        caller = await self.authn.caller(context)
        required("instance_id", request.instance_id)
        async with self.store.transaction() as s:
            ins = await self.store.get_in_workspace(
                s, Instance, request.instance_id, caller.workspace_id, "instance"
            )
        require(caller.can_read_instance(ins.function_id, ins.source_id), "read this instance")
        return pb.GetInstanceResponse(instance=convert.instance(ins))

    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: Ctx
    ) -> pb.ListInstancesResponse:
        """List instances the caller may read."""
        caller = await self.authn.caller(context)
        size = check_page_size(request.page_size)
        query = select(Instance).where(Instance.workspace_id == caller.workspace_id)
        if request.function_id:
            query = query.where(Instance.function_id == request.function_id)
        if request.source_id:
            query = query.where(Instance.source_id == request.source_id)
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
        paths = set(request.update_mask.paths)
        if not paths:
            raise InvalidArgument.field("update_mask", "name the fields to change")
        if unknown := paths - UPDATABLE:
            raise InvalidArgument.field(
                "update_mask",
                f"cannot change {', '.join(sorted(unknown))}; "
                f"changeable: {', '.join(sorted(UPDATABLE))}",
            )
        new = request.instance
        required("instance.id", new.id)
        size, wait, timeout = check_batching(
            new.batch_size if "batch_size" in paths else None,
            new.batch_wait_ms if "batch_wait_ms" in paths else None,
            new.timeout_ms if "timeout_ms" in paths else None,
        )
        async with self.store.transaction() as s:
            ins = await self.instances.locked_instance(s, caller, new.id, new.etag)
            if "settings" in paths:
                ver = await self.store.get(s, FunctionVersion, ins.version_id, "version")
                ins.settings = self.instances.settings_for(
                    ins, ins.id, ver.settings, json_format.MessageToDict(new.settings)
                )
            if "enabled" in paths:
                ins.enabled = new.enabled
            if "batch_size" in paths:
                ins.batch_size = size
            if "batch_wait_ms" in paths:
                ins.batch_wait_ms = wait
            if "timeout_ms" in paths:
                ins.timeout_ms = timeout
            if paths & {"retry_window_seconds", "retry_max_delay_seconds"}:
                ins.retry_window_seconds, ins.retry_max_delay_seconds = check_retry(
                    new.retry_window_seconds
                    if "retry_window_seconds" in paths
                    else ins.retry_window_seconds,
                    new.retry_max_delay_seconds
                    if "retry_max_delay_seconds" in paths
                    else ins.retry_max_delay_seconds,
                )
            if "filters" in paths:
                ins.filters = check_filters(list(new.filters), self.deps.check_filter)
            if "name" in paths:
                ins.name = check_name("instance.name", new.name)
            ins.revision += 1
            ins.updated_at = now()
            s.add(ins)
            await audit(
                self.store,
                s,
                caller,
                "instance.update",
                "instance",
                ins.id,
                {"fields": sorted(paths)},
            )
            await self.store.bump_config(s)
        return pb.UpdateInstanceResponse(instance=convert.instance(ins))

    async def DeleteInstance(
        self, request: pb.DeleteInstanceRequest, context: Ctx
    ) -> pb.DeleteInstanceResponse:
        """Delete an instance."""
        caller = await self.authn.caller(context)
        required("instance_id", request.instance_id)
        async with self.store.transaction() as s:
            ins = await self.instances.locked_instance(s, caller, request.instance_id, request.etag)
            await s.delete(ins)
            await audit(
                self.store,
                s,
                caller,
                "instance.delete",
                "instance",
                ins.id,
                {"name": ins.name},
            )
            await self.store.bump_config(s)
        return pb.DeleteInstanceResponse()
