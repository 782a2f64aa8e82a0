"""Registry RPCs that move instances to versions: Save & Deploy, and Deploy (with settings)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import json_format

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common.errors import InvalidArgument, NotFound
from services.registry import convert
from services.registry.auth import require
from services.registry.deps import RegistryDeps, audit
from services.registry.etags import check as check_etag
from services.registry.idempotency import RequestKey, request_key
from services.registry.instance_settings import InstanceSettings, with_prefix
from services.registry.models import Function, FunctionVersion
from services.registry.rpc_catalog import CatalogRpcs
from services.registry.validation import check_code, check_setting_definitions, required

Ctx = grpc.aio.ServicerContext


def deploy_details(before: str, ver: FunctionVersion, changes: dict[str, Any] | None) -> dict:
    """Describe a deploy for the audit trail: versions, and the names (never values) changed."""
    details: dict[str, Any] = {"from_version_id": before, "to_version_id": ver.id}
    if changes:
        details["settings_changed"] = sorted(changes)
    return details


class DeployRpcs:
    """Save & Deploy, and deploys of saved versions."""

    def __init__(self, deps: RegistryDeps) -> None:
        self.deps = deps
        self.store = deps.store
        self.authn = deps.authn
        self.instances = InstanceSettings(deps)

    async def SaveFunction(
        self, request: pb.SaveFunctionRequest, context: Ctx
    ) -> pb.SaveFunctionResponse:
        """Save a new version; with deploy_instance_ids also deploy it (all or nothing)."""
        caller = await self.authn.caller(context)
        required("function_id", request.function_id)
        schema = check_setting_definitions(request.settings)
        await asyncio.to_thread(check_code, request.code, self.deps.check_syntax)
        targets = list(dict.fromkeys(request.deploy_instance_ids))
        if stray := sorted(set(request.deploy_settings) - set(targets)):
            raise InvalidArgument.field(
                "deploy_settings",
                f"{', '.join(stray)} not in deploy_instance_ids; list every instance to deploy",
            )
        key = request_key(caller.workspace_id, "SaveFunction", request)
        return await self.deps.idempotency.once(
            key,
            pb.SaveFunctionResponse,
            lambda: self._save(caller, request, schema, targets, key),
        )

    async def _save(
        self,
        caller,
        request: pb.SaveFunctionRequest,
        schema: list,
        targets: list[str],
        key: RequestKey | None,
    ) -> pb.SaveFunctionResponse:
        async with self.store.transaction() as s:
            fn = await self.store.get_in_workspace(
                s, Function, request.function_id, caller.workspace_id, "function", lock=True
            )
            require(caller.can_write_function(fn.id), "save this function (Functions Admin)")
            check_etag("function", fn.id, fn.revision, request.etag)
            if request.description:
                fn.description = request.description
            fn.revision += 1
            ver = CatalogRpcs._new_version(fn, request.code, schema, caller.email)
            s.add(ver)
            s.add(fn)
            await s.flush()
            deployed = []
            for ins_id in targets:
                ins = await self.instances.locked_instance(s, caller, ins_id, "")
                if ins.function_id != fn.id:
                    raise InvalidArgument.field(
                        "deploy_instance_ids", f"{ins_id} is not an instance of this function"
                    )
                before = ins.version_id
                changes = (
                    json_format.MessageToDict(request.deploy_settings[ins_id])
                    if ins_id in request.deploy_settings
                    else None
                )
                try:
                    self.instances.deploy(s, ins, ver, changes)
                except InvalidArgument as error:
                    raise with_prefix(
                        error,
                        f"deploy_settings[{ins_id}].",
                        f"instance {ins_id} cannot run the new version with its settings; "
                        "give the missing or changed values in deploy_settings",
                    ) from error
                deployed.append(ins)
                await audit(
                    self.store,
                    s,
                    caller,
                    "instance.deploy",
                    "instance",
                    ins.id,
                    deploy_details(before, ver, changes),
                )
            await audit(
                self.store,
                s,
                caller,
                "function.save",
                "function",
                fn.id,
                {
                    "version_id": ver.id,
                    "version": ver.number,
                    "deployed_instance_ids": [i.id for i in deployed],
                },
            )
            if deployed:
                await self.store.bump_config(s)
            response = pb.SaveFunctionResponse(
                function=convert.function(fn),
                version=convert.version(ver),
                deployed_instances=[convert.instance(i) for i in deployed],
            )
            await self.deps.idempotency.save(s, key, response)
        return response

    async def DeployInstance(
        self, request: pb.DeployInstanceRequest, context: Ctx
    ) -> pb.DeployInstanceResponse:
        """Move an instance to a version of its function, changing setting values with it."""
        caller = await self.authn.caller(context)
        required("instance_id", request.instance_id)
        required("version_id", request.version_id)
        changes = (
            json_format.MessageToDict(request.settings) if request.HasField("settings") else None
        )
        async with self.store.transaction() as s:
            ins = await self.instances.locked_instance(s, caller, request.instance_id, request.etag)
            ver = await s.get(FunctionVersion, request.version_id)
            if ver is None or ver.function_id != ins.function_id:
                raise NotFound("version", request.version_id)
            before = ins.version_id
            self.instances.deploy(s, ins, ver, changes)
            await audit(
                self.store,
                s,
                caller,
                "instance.deploy",
                "instance",
                ins.id,
                deploy_details(before, ver, changes),
            )
            await self.store.bump_config(s)
        return pb.DeployInstanceResponse(instance=convert.instance(ins))
