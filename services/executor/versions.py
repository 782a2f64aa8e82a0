"""Function versions other than the deployed one, for packs replayed on a chosen version."""

from __future__ import annotations

import time
from collections import OrderedDict

import grpc

from eventfn_api.registry.v1 import registry_pb2 as rpb
from eventfn_api.registry.v1 import registry_pb2_grpc
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common import names
from services.common.rpc import CLIENT_OPTIONS
from services.common.rpc_observe import client_interceptors

CACHED_VERSIONS = 64
# How long a fetched version is run without asking the registry again: one deleted meanwhile
# (DeleteFunctionVersion) stops running within that, as on every other executor.
CACHED_SECONDS = 10.0


class VersionSource:
    """Fetch versions from the registry with the service token; keep the recent ones."""

    def __init__(
        self, registry_addr: str, service_token: str, *, cached_seconds: float = CACHED_SECONDS
    ) -> None:
        self._cached_seconds = cached_seconds
        self._channel = grpc.aio.insecure_channel(
            registry_addr, options=CLIENT_OPTIONS, interceptors=client_interceptors()
        )
        self._stub = registry_pb2_grpc.RegistryStub(self._channel)
        self._metadata = (("authorization", f"Bearer {service_token}"),)
        # Per version id: the version, and when it was fetched (monotonic).
        self._cache: OrderedDict[str, tuple[res.FunctionVersion, float]] = OrderedDict()

    async def get(self, config: rpb.InstanceConfig, version_id: str) -> res.FunctionVersion | None:
        """Return a version of the instance's function, or None when the registry does not
        know it."""
        cached = self._cache.get(version_id)
        if cached is not None and time.monotonic() - cached[1] < self._cached_seconds:
            self._cache.move_to_end(version_id)
            return cached[0]
        name = names.version(config.workspace_id, config.function_id, version_id)
        try:
            reply = await self._stub.GetFunctionVersion(  # pyright: ignore[reportAttributeAccessIssue]
                rpb.GetFunctionVersionRequest(name=name), metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                self._cache.pop(version_id, None)
                return None
            raise
        self._cache[version_id] = (reply.version, time.monotonic())
        self._cache.move_to_end(version_id)
        if len(self._cache) > CACHED_VERSIONS:
            self._cache.popitem(last=False)
        return reply.version

    def pinned(
        self, config: rpb.InstanceConfig, version: res.FunctionVersion
    ) -> rpb.InstanceConfig:
        """Return the instance's configuration running `version` instead of the deployed one."""
        out = rpb.InstanceConfig()
        out.CopyFrom(config)
        out.version_id = names.last(version.name)
        out.code = version.code
        return out

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()
