"""WatchConfig: the data plane's configuration stream, driven by PostgreSQL LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
import grpc

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common.errors import PermissionDenied
from services.registry import convert
from services.registry.deps import RegistryDeps
from services.registry.instance_settings import InstanceSettings
from services.registry.secrets import is_sealed
from services.registry.store import CONFIG_CHANNEL

log = logging.getLogger(__name__)
Snapshot = tuple[int, dict[str, pb.SourceConfig], dict[str, pb.InstanceConfig]]
# A watcher also re-reads this often, so a notification lost while reconnecting costs little.
RECHECK_SECONDS = 15.0


class ConfigNotifier:
    """Fan PostgreSQL notifications on the config channel out to every watcher."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._events: set[asyncio.Event] = set()

    async def start(self) -> None:
        """Connect and LISTEN."""
        conn = await asyncpg.connect(self._dsn)
        await conn.add_listener(CONFIG_CHANNEL, self._notify)
        self._conn = conn

    def _notify(self, *_: object) -> None:
        for event in self._events:
            event.set()

    @contextlib.contextmanager
    def subscribe(self):
        """Yield an Event set whenever the configuration changes."""
        event = asyncio.Event()
        self._events.add(event)
        try:
            yield event
        finally:
            self._events.discard(event)

    async def close(self) -> None:
        """Stop listening."""
        if self._conn is not None:
            await self._conn.close()


class WatchRpcs:
    """The WatchConfig stream."""

    def __init__(self, deps: RegistryDeps, notifier: ConfigNotifier) -> None:
        self.deps = deps
        self.store = deps.store
        self.authn = deps.authn
        self.instances = InstanceSettings(deps)
        self.notifier = notifier
        self._state_lock: asyncio.Lock | None = None
        self._state_cache: Snapshot | None = None

    async def _state(self) -> Snapshot:
        """Return the configuration at the current revision, read once for every watcher.

        All watchers wake on the same notification; the first reads the snapshot, the others
        find it cached for that revision instead of each reading and decrypting it again.
        """
        if self._state_lock is None:
            self._state_lock = asyncio.Lock()
        async with self._state_lock:
            async with self.store.transaction() as session:
                current = await self.store.config_revision(session)
            if self._state_cache is None or self._state_cache[0] != current:
                self._state_cache = await self._read_state()
            return self._state_cache

    async def _read_state(self) -> Snapshot:
        revision, sources, rows = await self.store.snapshot()
        source_configs = {
            s.id: pb.SourceConfig(
                id=s.id, workspace_id=s.workspace_id, workspace_name=w.name, write_key=s.write_key
            )
            for s, w in sources
        }
        instance_configs = {}
        for ins, ver, fn, ws in rows:
            instance_configs[ins.id] = pb.InstanceConfig(
                id=ins.id,
                workspace_id=ins.workspace_id,
                source_id=ins.source_id,
                function_id=fn.id,
                function_name=fn.name,
                integration_key=f"{fn.name} ({ws.name})",
                version_id=ver.id,
                code=ver.code,
                settings=convert.struct(await self.instances.open_settings(ins)),
                secret_setting_names=sorted(
                    {s["name"] for s in ver.settings if s["encrypted"]}
                    | {k for k, v in ins.settings.items() if is_sealed(v)}
                ),
                enabled=ins.enabled,
                batch_size=ins.batch_size,
                batch_wait=convert.duration_ms(ins.batch_wait_ms),
                timeout=convert.duration_ms(ins.timeout_ms),
                retry_window=convert.duration_s(ins.retry_window_seconds),
                retry_max_delay=convert.duration_s(ins.retry_max_delay_seconds),
                filters=ins.filters,
                revision=ins.revision,
                version_create_time=convert.ts(ver.created_at),
            )
        return revision, source_configs, instance_configs

    async def WatchConfig(
        self, request: pb.WatchConfigRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchConfigResponse]:
        """Send a snapshot, then every change."""
        if not self.authn.is_service(context):
            raise PermissionDenied(
                "only the deployment's service token may watch the configuration"
            )
        log.info("config watcher %r connected", request.watcher)
        with self.notifier.subscribe() as changed:
            revision, sources, instances = await self._state()
            yield pb.WatchConfigResponse(
                revision=revision,
                reset=True,
                sources=list(sources.values()),
                instances=list(instances.values()),
            )
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), RECHECK_SECONDS)
                changed.clear()
                new_revision, new_sources, new_instances = await self._state()
                if new_revision == revision:
                    continue
                yield pb.WatchConfigResponse(
                    revision=new_revision,
                    sources=[v for k, v in new_sources.items() if sources.get(k) != v],
                    removed_source_ids=[k for k in sources if k not in new_sources],
                    instances=[v for k, v in new_instances.items() if instances.get(k) != v],
                    removed_instance_ids=[k for k in instances if k not in new_instances],
                )
                revision, sources, instances = new_revision, new_sources, new_instances
