"""Build and run the registry: storage, servicer, gRPC server. `__main__` calls `serve`."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta

import grpc
from sqlalchemy.ext.asyncio import create_async_engine

from eventfn_api.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common import rpc
from services.common.metrics import start_metrics
from services.common.page_tokens import PageTokens
from services.common.settings import asyncpg_url, sqlalchemy_url
from services.common.tasks import stop
from services.filters import parse_filter
from services.registry.access import Authenticator, ensure_bootstrap
from services.registry.deps import RegistryDeps
from services.registry.housekeeping import SWEEP_SECONDS, Housekeeping
from services.registry.idempotency import Idempotency
from services.registry.migrate import migrate
from services.registry.paging import Pages
from services.registry.secrets import SecretBox, load_or_create_key, parse_key
from services.registry.servicer import RegistryServicer
from services.registry.settings import RegistrySettings
from services.registry.store import RegistryStore
from services.registry.watch import ConfigNotifier
from services.runtime.syntax import check_syntax

log = logging.getLogger(__name__)
SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name


@dataclass
class RunningRegistry:
    """A started registry: its server and bound port."""

    server: grpc.aio.Server
    port: int


async def start_registry(settings: RegistrySettings, stack: AsyncExitStack) -> RunningRegistry:
    """Migrate, wire and start the registry; `stack` closes everything in reverse order."""
    # hide_parameters: statement values (token hashes, sealed settings) stay out of exception
    # texts, hence out of the logs that INTERNAL errors are written to.
    engine = create_async_engine(
        sqlalchemy_url(settings.database_url), pool_size=10, hide_parameters=True
    )
    stack.push_async_callback(engine.dispose)
    await migrate(engine)
    store = RegistryStore(engine)
    if settings.bootstrap_token:
        await ensure_bootstrap(
            store, workspace_name=settings.bootstrap_workspace, secret=settings.bootstrap_token
        )
    key = load_or_create_key(settings.secret_key, settings.state_dir / "secret.key")
    previous = settings.secret_key_previous
    box = SecretBox(
        store, key, parse_key(previous, "EVENTFN_SECRET_KEY_PREVIOUS") if previous else None
    )
    await box.start()
    idempotency = Idempotency(store, box)
    retention = settings.registry_audit_retention_days
    housekeeping = Housekeeping(store, timedelta(days=retention) if retention else None)
    sweeping = asyncio.create_task(housekeeping.run(SWEEP_SECONDS), name="housekeeping")
    stack.push_async_callback(stop, sweeping)
    deps = RegistryDeps(
        store=store,
        authn=Authenticator(store, service_token=settings.service_token),
        secrets=box,
        check_syntax=check_syntax,
        check_filter=parse_filter,
        pages=Pages(PageTokens.from_secret(key)),
        idempotency=idempotency,
        changes=settings.change_budget(),
        code_bytes=settings.registry_code_bytes_per_workspace,
        instances=settings.registry_instances_per_workspace,
        sources=settings.registry_sources_per_workspace,
        members=settings.registry_members_per_workspace,
        tokens_per_member=settings.registry_tokens_per_member,
        deployed_code_bytes=settings.registry_deployed_code_bytes_per_workspace,
    )
    notifier = ConfigNotifier(asyncpg_url(settings.database_url))
    await notifier.start()
    stack.push_async_callback(notifier.close)
    metrics = start_metrics("eventfn-registry", settings.registry_metrics_listen, stack)
    servicer = RegistryServicer(deps, notifier)
    server, port, health = rpc.create_server(
        address=settings.registry_listen,
        register=[lambda s: registry_pb2_grpc.add_RegistryServicer_to_server(servicer, s)],
        meter=metrics.meter,
        service_names=[SERVICE_NAME],
    )
    await server.start()
    stack.push_async_callback(server.stop, 5)
    await rpc.set_serving(health, [SERVICE_NAME])
    log.info("registry listening on port %d", port)
    return RunningRegistry(server=server, port=port)
