"""The Registry gRPC servicer: every RPC, and the module that serves it.

Each RPC group is a class of its own module, built from the registry's dependencies; this
table says where each RPC lives, so a reader gets from an RPC name to its code in one hop.
"""

from __future__ import annotations

from eventfn_api.registry.v1 import registry_pb2_grpc
from services.registry.deps import RegistryDeps
from services.registry.rpc_access import AccessRpcs
from services.registry.rpc_audit import AuditRpcs
from services.registry.rpc_catalog import CatalogRpcs
from services.registry.rpc_deploys import DeployRpcs
from services.registry.rpc_instances import InstanceRpcs
from services.registry.watch import ConfigNotifier, WatchRpcs


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    """Serve every Registry RPC; see protos/eventfn/registry/v1/registry.proto."""

    def __init__(self, deps: RegistryDeps, notifier: ConfigNotifier) -> None:
        access = AccessRpcs(deps)
        audit = AuditRpcs(deps)
        catalog = CatalogRpcs(deps)
        deploys = DeployRpcs(deps)
        instances = InstanceRpcs(deps)
        watch = WatchRpcs(deps, notifier)
        # rpc_access.py
        self.CreateWorkspace = access.CreateWorkspace
        self.GetWorkspace = access.GetWorkspace
        self.WhoAmI = access.WhoAmI
        self.CreateMember = access.CreateMember
        self.ListMembers = access.ListMembers
        self.UpdateMemberRoles = access.UpdateMemberRoles
        self.DeleteMember = access.DeleteMember
        self.CreateToken = access.CreateToken
        self.ListTokens = access.ListTokens
        self.RevokeToken = access.RevokeToken
        # rpc_audit.py
        self.RecordInstanceAction = audit.RecordInstanceAction
        self.ListAuditEvents = audit.ListAuditEvents
        # rpc_catalog.py
        self.CreateSource = catalog.CreateSource
        self.GetSource = catalog.GetSource
        self.ListSources = catalog.ListSources
        self.RotateWriteKey = catalog.RotateWriteKey
        self.DeleteSource = catalog.DeleteSource
        self.CreateFunction = catalog.CreateFunction
        self.GetFunction = catalog.GetFunction
        self.ListFunctions = catalog.ListFunctions
        self.DeleteFunction = catalog.DeleteFunction
        self.ListFunctionVersions = catalog.ListFunctionVersions
        self.GetFunctionVersion = catalog.GetFunctionVersion
        # rpc_deploys.py
        self.SaveFunction = deploys.SaveFunction
        self.DeployInstance = deploys.DeployInstance
        # rpc_instances.py
        self.CreateInstance = instances.CreateInstance
        self.GetInstance = instances.GetInstance
        self.ListInstances = instances.ListInstances
        self.UpdateInstance = instances.UpdateInstance
        self.DeleteInstance = instances.DeleteInstance
        # watch.py
        self.WatchConfig = watch.WatchConfig
