"""WatchConfig: the data plane's configuration stream, driven by PostgreSQL LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import grpc

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common.errors import PermissionDenied
from services.registry import convert
from services.registry.deps import RegistryDeps
from services.registry.instance_settings import InstanceSettings
from services.registry.secrets import is_sealed
from services.registry.store import (
    CONFIG_CHANNEL,
    ConfigDelta,
    Function,
    FunctionVersion,
    Instance,
    Source,
    Workspace,
)

log = logging.getLogger(__name__)
# A watcher also re-reads this often, so a notification lost while reconnecting costs little.
RECHECK_SECONDS = 15.0
# A snapshot or change larger than this goes out in parts (`more`): gRPC clients refuse
# messages over 4 MiB by default.
PART_BYTES = 1024 * 1024


def parts(message: pb.WatchConfigResponse) -> list[pb.WatchConfigResponse]:
    """Split a message into parts of about PART_BYTES (one object never splits)."""
    if message.ByteSize() <= PART_BYTES:
        return [message]
    out = [pb.WatchConfigResponse(revision=message.revision, reset=message.reset)]
    used = 0  # bytes of items in the last part (sizing it anew per item was quadratic)
    for name in ("sources", "removed_source_ids", "versions", "instances", "removed_instance_ids"):
        for item in getattr(message, name):
            size = item.ByteSize() if not isinstance(item, str) else len(item.encode())
            size += 6  # the field's tag and length
            if used and used + size > PART_BYTES:
                out[-1].more = True
                out.append(pb.WatchConfigResponse(revision=message.revision))
                used = 0
            getattr(out[-1], name).append(item)
            used += size
    return out


class ConfigNotifier:
    """Fan PostgreSQL notifications on the config channel out to every watcher."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._events: set[asyncio.Event] = set()
        self.latest = -1  # the newest revision a notification announced

    async def start(self) -> None:
        """Connect and LISTEN."""
        conn = await asyncpg.connect(self._dsn)
        await conn.add_listener(CONFIG_CHANNEL, self._notify)
        self._conn = conn

    def _notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.latest = max(self.latest, int(payload))
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


class LiveConfig:
    """The data-plane configuration kept current in memory, advanced by the change log.

    Every change re-reads and decrypts only the sources and instances it touched (the change
    log names them), so its cost does not grow with the number of instances; the whole
    configuration is read once, at the first watcher (or when the log cannot tell what
    changed). All watchers share it: each remembers its revision and is sent what changed
    since, built from the touched ids kept for the last `HISTORY` revisions.

    A version's code is kept once however many instances run it (`code`, counted in `runs`).
    A watcher asking for `code_by_version` is sent it once, with the first of its instances
    the watcher gets, and again only after the watcher let it go (no instance of its ran the
    version at some revision: `_dropped` keeps when, for the revisions of the history): a
    stream remembers what it `held` (a rename of a function whose instances ran 13 versions
    of 5 MB sent them all again, to every watcher).
    """

    HISTORY = 10_000
    PRUNE_AFTER = timedelta(hours=1)
    PRUNE_EVERY = 600.0

    def __init__(self, deps: RegistryDeps) -> None:
        self.store = deps.store
        self.instances = InstanceSettings(deps)
        self.revision = -1
        self.sources: dict[str, pb.SourceConfig] = {}
        self.configs: dict[str, pb.InstanceConfig] = {}  # code left out: in `code`
        self.code: dict[str, str] = {}  # by version id, of the versions instances run
        self.runs: Counter[str] = Counter()  # instances running each version
        # (revision, version id) of each version no instance ran from that revision on.
        self._dropped: deque[tuple[int, str]] = deque()
        # (revision, touched source ids, touched instance ids), oldest first.
        self._history: deque[tuple[int, set[str], set[str]]] = deque(maxlen=self.HISTORY)
        self._lock = asyncio.Lock()
        self._pruned_at = 0.0

    async def refresh(self, announced: int | None = None) -> None:
        """Catch up with the database: apply what changed since this copy's revision.

        `announced`: the revision a notification announced; when this copy has it already
        (another watcher caught up first), nothing is read.
        """
        if announced is not None and 0 <= announced <= self.revision:
            return
        await self._apply()
        await self._prune()

    async def _apply(self) -> None:
        async with self._lock:
            delta = (
                None
                if self.revision < 0
                else await self.store.changes_since(self.revision, self.code)
            )
            full = delta is None
            if delta is None:
                delta = await self.store.snapshot()
            elif delta.revision == self.revision:
                return
            # Every await before anything changes: streams read this copy without the lock
            # (`since`), and one read between an instance taken out and put back was told it
            # was removed, its version's code then never sent again.
            configs: list[pb.InstanceConfig] = []
            for row in delta.instances:
                try:
                    configs.append(await self._instance_config(*row))
                except ValueError as exc:  # settings that cannot be decrypted: it alone is out
                    log.error(
                        "instance %s is left out of the data plane's configuration (no events "
                        "are routed to it) until its settings can be read or it is deleted: %s",
                        row[0].id,
                        exc,
                    )
            try:
                self._take(delta, configs, full)
            except BaseException:
                self.revision = -1  # half applied: the next refresh reads everything again
                raise

    def _take(self, delta: ConfigDelta, configs: list[pb.InstanceConfig], full: bool) -> None:
        """Apply a delta (or snapshot) read, its instances' configs built (no await here)."""
        if full:
            self.sources.clear()
            self.configs.clear()
            self.code.clear()
            self.runs.clear()
            self._dropped.clear()
            self._history.clear()
        for source_id in delta.source_ids:
            self.sources.pop(source_id, None)
        for source, workspace in delta.sources:
            self.sources[source.id] = source_config(source, workspace)
        # Versions are let go after the new configs hold theirs: a version's code known
        # when the delta was read is not in it.
        replaced = [self.configs.pop(i) for i in delta.instance_ids if i in self.configs]
        for config in configs:
            self.configs[config.id] = config
            self.runs[config.version_id] += 1
            self.code.setdefault(config.version_id, delta.code.get(config.version_id, ""))
        for config in replaced:
            self._let_go(config.version_id, delta.revision)
        if not full:
            self._history.append((delta.revision, delta.source_ids, delta.instance_ids))
            while self._dropped and self._dropped[0][0] < self._history[0][0]:
                self._dropped.popleft()  # older than any delta sent: a snapshot
        self.revision = delta.revision

    def _let_go(self, version_id: str, revision: int) -> None:
        """Count one instance fewer running a version; forget its code once none does."""
        self.runs[version_id] -= 1
        if self.runs[version_id] <= 0:
            del self.runs[version_id]
            self.code.pop(version_id, None)
            self._dropped.append((revision, version_id))

    def _message(
        self,
        configs: list[pb.InstanceConfig],
        held: set[str] | None,
        after: int,
        **fields: Any,
    ) -> pb.WatchConfigResponse:
        """Return a message bringing a watcher from revision `after`: these instances, with
        the code of their versions the watcher does not hold (`held`, updated), or with the
        code in each (`held` None: a watcher of an earlier release)."""
        if held is None:
            configs = [self._with_code(c) for c in configs]
        else:
            for at, version_id in reversed(self._dropped):
                if at <= after:
                    break
                held.discard(version_id)
            new = [v for v in dict.fromkeys(c.version_id for c in configs) if v not in held]
            held.update(new)
            fields["versions"] = [pb.VersionCode(id=v, code=self.code[v]) for v in new]
        return pb.WatchConfigResponse(revision=self.revision, instances=configs, **fields)

    def _with_code(self, config: pb.InstanceConfig) -> pb.InstanceConfig:
        full = pb.InstanceConfig()
        full.CopyFrom(config)
        full.code = self.code[config.version_id]
        return full

    def snapshot(self, held: set[str] | None) -> pb.WatchConfigResponse:
        """Return the whole configuration as a reset message (for `held`, see `_message`)."""
        if held is not None:
            held.clear()  # a watcher drops everything it had
        return self._message(
            list(self.configs.values()),
            held,
            self.revision,
            reset=True,
            sources=list(self.sources.values()),
        )

    def since(self, revision: int, held: set[str] | None) -> pb.WatchConfigResponse | None:
        """Return what changed after `revision` (a snapshot if that is too old), or None."""
        if revision == self.revision:
            return None
        if not self._history or self._history[0][0] > revision + 1:
            return self.snapshot(held)
        source_ids: set[str] = set()
        instance_ids: set[str] = set()
        for at, sources, instances in reversed(self._history):
            if at <= revision:
                break
            source_ids |= sources
            instance_ids |= instances
        return self._message(
            [self.configs[i] for i in sorted(instance_ids) if i in self.configs],
            held,
            revision,
            sources=[self.sources[i] for i in sorted(source_ids) if i in self.sources],
            removed_source_ids=sorted(i for i in source_ids if i not in self.sources),
            removed_instance_ids=sorted(i for i in instance_ids if i not in self.configs),
        )

    async def _prune(self) -> None:
        """Now and then, drop log rows no live copy needs (a copy further behind re-reads)."""
        if time.monotonic() - self._pruned_at < self.PRUNE_EVERY:
            return
        self._pruned_at = time.monotonic()
        await self.store.prune_config_changes(self.PRUNE_AFTER)

    async def _instance_config(
        self, ins: Instance, ver: FunctionVersion, fn: Function, ws: Workspace
    ) -> pb.InstanceConfig:
        """Build what the data plane needs of an instance, settings decrypted."""
        return pb.InstanceConfig(
            id=ins.id,
            workspace_id=ins.workspace_id,
            source_id=ins.source_id,
            function_id=fn.id,
            function_name=fn.name,
            integration_key=f"{fn.name} ({ws.name})",
            version_id=ver.id,
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
            propagate_trace=ins.propagate_trace,
            revision=ins.revision,
            version_create_time=convert.ts(ver.created_at),
        )


def source_config(source: Source, workspace: Workspace) -> pb.SourceConfig:
    """Build what the data plane needs of a source."""
    return pb.SourceConfig(
        id=source.id,
        workspace_id=source.workspace_id,
        workspace_name=workspace.name,
        write_key=source.write_key,
    )


class WatchRpcs:
    """The WatchConfig stream."""

    def __init__(self, deps: RegistryDeps, notifier: ConfigNotifier) -> None:
        self.authn = deps.authn
        self.live = LiveConfig(deps)
        self.notifier = notifier

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
            await self.live.refresh()
            # The versions whose code this watcher holds; None: it wants it in each instance.
            held: set[str] | None = set() if request.code_by_version else None
            snapshot = self.live.snapshot(held)
            revision = snapshot.revision
            for part in parts(snapshot):
                yield part
            while True:
                woken = False
                with contextlib.suppress(TimeoutError):
                    woken = await asyncio.wait_for(changed.wait(), RECHECK_SECONDS)
                changed.clear()
                # Woken by a notification: only what it announced is needed; every
                # RECHECK_SECONDS without one, the database is asked (a lost notification).
                await self.live.refresh(self.notifier.latest if woken else None)
                message = self.live.since(revision, held)
                if message is not None:
                    revision = message.revision
                    for part in parts(message):
                        yield part
