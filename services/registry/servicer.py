"""The Registry gRPC servicer: the RPC groups put together."""

from __future__ import annotations

from eventfn.registry.v1 import registry_pb2_grpc
from services.registry.base import RegistryDeps
from services.registry.rpc_access import AccessRpcs
from services.registry.rpc_audit import AuditRpcs
from services.registry.rpc_catalog import CatalogRpcs
from services.registry.rpc_deploys import DeployRpcs
from services.registry.watch import ConfigNotifier, WatchRpcs


class RegistryServicer(
    AccessRpcs,
    CatalogRpcs,
    WatchRpcs,
    DeployRpcs,
    AuditRpcs,
    registry_pb2_grpc.RegistryServicer,
):
    """Serve every Registry RPC; see protos/eventfn/registry/v1/registry.proto."""

    def __init__(self, deps: RegistryDeps, notifier: ConfigNotifier) -> None:
        super().__init__(deps)
        self.notifier = notifier
