"""Registry RPCs that move instances to versions: Save & Deploy, and Deploy (with settings)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common import names
from services.common.errors import FieldViolation, InvalidArgument, NotFound
from services.registry import convert
from services.registry.auth import Caller, require
from services.registry.deps import RegistryDeps
from services.registry.etags import check as check_etag
from services.registry.idempotency import RequestKey, request_key
from services.registry.instance_settings import InstanceSettings, with_prefix
from services.registry.models import FunctionVersion
from services.registry.rpc_functions import function_of, new_version, with_code, without_code
from services.registry.validation import check_code, check_setting_definitions, settings_values

Ctx = grpc.aio.ServicerContext


def deploy_details(
    workspace_id: str, function_id: str, before: str, ver: FunctionVersion, changes: Any
) -> dict:
    """Describe a deploy for the audit trail: versions, and the names (never values) changed."""
    details: dict[str, Any] = {
        "from_version": names.version(workspace_id, function_id, before),
        "to_version": names.version(workspace_id, function_id, ver.id),
    }
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
        """Save a new version; with deploy_instances also deploy it (all or nothing)."""
        caller = await self.authn.caller(context)
        function_id = names.parse("name", request.name, names.FUNCTION, caller.workspace_id)
        # Before a retry is answered (a member whose roles changed gets none of it).
        require(caller.can_write_function(function_id), "save this function (Functions Admin)")
        schema = check_setting_definitions(request.settings)
        await asyncio.to_thread(check_code, request.code, self.deps.check_syntax)
        targets = list(dict.fromkeys(request.deploy_instances))
        ids = [
            names.parse(f"deploy_instances[{i}]", t, names.INSTANCE, caller.workspace_id)
            for i, t in enumerate(targets)
        ]
        if stray := sorted(set(request.deploy_settings) - set(targets)):
            raise InvalidArgument.field(
                "deploy_settings",
                f"{', '.join(stray)} not in deploy_instances; list every instance to deploy",
            )
        key = request_key(caller.workspace_id, caller.member_id, "SaveFunction", request)
        saved = await self.deps.idempotency.once(
            key,
            pb.SaveFunctionResponse,
            lambda: self._save(caller, request, schema, list(zip(targets, ids, strict=True)), key),
        )
        return await with_code(self.store, saved)

    async def _save(
        self,
        caller: Caller,
        request: pb.SaveFunctionRequest,
        schema: list,
        targets: list[tuple[str, str]],
        key: RequestKey | None,
    ) -> pb.SaveFunctionResponse:
        async with self.store.transaction() as s:
            if targets:
                await self.deps.lock_deployments(s, caller.workspace_id)
            fn = await function_of(self.store, s, caller, "name", request.name, lock=True)
            check_etag("function", fn.id, fn.revision, request.etag)
            await self.deps.room_for_code(s, caller.workspace_id, request.code, schema)
            fn.revision += 1
            ver = new_version(fn, request.code, schema, caller.email)
            s.add(ver)
            s.add(fn)
            await s.flush()
            if targets:
                moving = [ins_id for _, ins_id in targets]
                await self.deps.room_to_run(s, caller.workspace_id, ver.id, moving)
            deployed = []
            for position, (target, ins_id) in enumerate(targets):
                ins = await self.instances.locked_instance(s, caller, ins_id, "", name=target)
                if ins.function_id != fn.id:
                    raise InvalidArgument(
                        f"{target} is not an instance of this function",
                        [
                            FieldViolation(
                                f"deploy_instances[{position}]", "not an instance of this function"
                            )
                        ],
                    )
                before = ins.version_id
                changes = (
                    settings_values(f"deploy_settings[{target}]", request.deploy_settings[target])
                    if target in request.deploy_settings
                    else None
                )
                try:
                    await self.instances.deploy(s, ins, ver, changes)
                except InvalidArgument as error:
                    raise with_prefix(
                        error,
                        f"deploy_settings[{target}].",
                        f"instance {target} cannot run the new version with its settings; "
                        "give the missing or changed values in deploy_settings",
                    ) from error
                deployed.append(ins)
                await self.deps.audit(
                    s,
                    caller,
                    "instance.deploy",
                    "instance",
                    ins.id,
                    deploy_details(fn.workspace_id, fn.id, before, ver, changes),
                )
            await self.deps.audit(
                s,
                caller,
                "function.save",
                "function",
                fn.id,
                {
                    "version": names.version(fn.workspace_id, fn.id, ver.id),
                    "number": ver.number,
                    "deployed_instances": [t for t, _ in targets],
                },
            )
            if deployed:
                await self.deps.change_config(s, caller, instances=[i.id for i in deployed])
            response = pb.SaveFunctionResponse(
                function=convert.function(fn),
                version=convert.version(ver, fn.workspace_id),
                deployed_instances=[convert.instance(i) for i in deployed],
            )
            await self.deps.idempotency.save(s, key, without_code(response))
        return response

    async def DeployInstance(
        self, request: pb.DeployInstanceRequest, context: Ctx
    ) -> pb.DeployInstanceResponse:
        """Move an instance to a version of its function, changing setting values with it."""
        caller = await self.authn.caller(context)
        instance_id = names.parse("name", request.name, names.INSTANCE, caller.workspace_id)
        function_id, version_id = names.parse_version(
            "version", request.version, caller.workspace_id
        )
        changes = (
            settings_values("settings", request.settings) if request.HasField("settings") else None
        )
        async with self.store.transaction() as s:
            await self.deps.lock_deployments(s, caller.workspace_id)
            ins = await self.instances.locked_instance(
                s, caller, instance_id, request.etag, name=request.name
            )
            ver = await self.store.version_to_run(s, version_id)
            if ver is None or ver.function_id != ins.function_id or function_id != ver.function_id:
                raise NotFound("version", request.version)
            await self.deps.room_to_run(s, caller.workspace_id, ver.id, [ins.id])
            before = ins.version_id
            await self.instances.deploy(s, ins, ver, changes)
            await self.deps.audit(
                s,
                caller,
                "instance.deploy",
                "instance",
                ins.id,
                deploy_details(ins.workspace_id, ins.function_id, before, ver, changes),
            )
            await self.deps.change_config(s, caller, instances=[ins.id])
        return pb.DeployInstanceResponse(instance=convert.instance(ins))
