"""The Registry gRPC servicer: every RPC, and the module that serves it.

Each RPC group is a class of its own module, built from the registry's dependencies; this
table says where each RPC lives, so a reader gets from an RPC name to its code in one hop.
"""

from __future__ import annotations

from eventfn_api.registry.v1 import registry_pb2_grpc
from services.registry.deps import RegistryDeps
from services.registry.rpc_access import AccessRpcs
from services.registry.rpc_audit import AuditRpcs
from services.registry.rpc_deploys import DeployRpcs
from services.registry.rpc_functions import FunctionRpcs
from services.registry.rpc_instances import InstanceRpcs
from services.registry.rpc_keys import KeyRpcs
from services.registry.rpc_sources import SourceRpcs
from services.registry.rpc_workspaces import WorkspaceRpcs
from services.registry.watch import ConfigNotifier, WatchRpcs


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    """Serve every Registry RPC; see protos/eventfn/registry/v1/registry.proto."""

    def __init__(self, deps: RegistryDeps, notifier: ConfigNotifier) -> None:
        access = AccessRpcs(deps)
        audit = AuditRpcs(deps)
        deploys = DeployRpcs(deps)
        functions = FunctionRpcs(deps)
        instances = InstanceRpcs(deps)
        keys = KeyRpcs(deps)
        sources = SourceRpcs(deps)
        workspaces = WorkspaceRpcs(deps)
        watch = WatchRpcs(deps, notifier)
        # rpc_workspaces.py
        self.CreateWorkspace = workspaces.CreateWorkspace
        self.GetWorkspace = workspaces.GetWorkspace
        self.ListWorkspaces = workspaces.ListWorkspaces
        self.WhoAmI = workspaces.WhoAmI
        # rpc_access.py
        self.CreateMember = access.CreateMember
        self.GetMember = access.GetMember
        self.ListMembers = access.ListMembers
        self.UpdateMember = access.UpdateMember
        self.DeleteMember = access.DeleteMember
        self.CreateToken = access.CreateToken
        self.GetToken = access.GetToken
        self.ListTokens = access.ListTokens
        self.RevokeToken = access.RevokeToken
        # rpc_audit.py
        self.RecordInstanceAction = audit.RecordInstanceAction
        self.ListAuditEvents = audit.ListAuditEvents
        # rpc_sources.py
        self.CreateSource = sources.CreateSource
        self.GetSource = sources.GetSource
        self.ListSources = sources.ListSources
        self.UpdateSource = sources.UpdateSource
        self.RotateWriteKey = sources.RotateWriteKey
        self.DeleteSource = sources.DeleteSource
        # rpc_functions.py
        self.CreateFunction = functions.CreateFunction
        self.GetFunction = functions.GetFunction
        self.ListFunctions = functions.ListFunctions
        self.UpdateFunction = functions.UpdateFunction
        self.DeleteFunction = functions.DeleteFunction
        self.ListFunctionVersions = functions.ListFunctionVersions
        self.GetFunctionVersion = functions.GetFunctionVersion
        self.DeleteFunctionVersion = functions.DeleteFunctionVersion
        # rpc_deploys.py
        self.SaveFunction = deploys.SaveFunction
        self.DeployInstance = deploys.DeployInstance
        # rpc_instances.py
        self.CreateInstance = instances.CreateInstance
        self.GetInstance = instances.GetInstance
        self.ListInstances = instances.ListInstances
        self.UpdateInstance = instances.UpdateInstance
        self.DeleteInstance = instances.DeleteInstance
        # rpc_keys.py
        self.RotateSecretKey = keys.RotateSecretKey
        # watch.py
        self.WatchConfig = watch.WatchConfig
