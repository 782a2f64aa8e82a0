"""Keep a live in-memory copy of the registry's data-plane configuration (WatchConfig).

The registry streams a full snapshot first (`reset=True`), then deltas. `ConfigWatcher`
applies each message to a copy and swaps in a new immutable `ConfigView`, so a reader
holding a view never sees a half-applied message. Its maps are persistent (hash array mapped
tries, `immutables`): a copy with a few entries changed shares the rest with the original,
so a delta costs what it touches, however many sources and instances there are. When the
stream breaks it reconnects with capped, jittered backoff; the registry starts every new
stream with a snapshot, and the last good view keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc
from immutables import Map

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import registry_pb2_grpc
from services.common import tasks
from services.common.rpc import CLIENT_OPTIONS
from services.common.rpc_observe import client_interceptors

log = logging.getLogger(__name__)
# Reconnection jitter of its own: the global `random` is neither drawn from nor followed.
_JITTER = random.Random()


@dataclass(frozen=True, slots=True)
class ConfigView:
    """One consistent revision of the configuration, with lookup maps."""

    revision: int = 0
    sources: Map[str, pb.SourceConfig] = field(default_factory=Map)
    sources_by_write_key: Map[str, pb.SourceConfig] = field(default_factory=Map)
    instances: Map[str, pb.InstanceConfig] = field(default_factory=Map)
    instances_by_source: Map[str, tuple[pb.InstanceConfig, ...]] = field(default_factory=Map)
    # Ids of the sources whose own config or instances the last message changed (None: a
    # snapshot, everything may have), so derived state is rebuilt only for those.
    changed_sources: frozenset[str] | None = None
    # The code of the versions instances run, once each (instances come without it), and
    # how many instances run each.
    code: Map[str, str] = field(default_factory=Map)
    runs: Map[str, int] = field(default_factory=Map)

    def code_of(self, instance: pb.InstanceConfig) -> str:
        """Return the code an instance runs (in the instance, from a registry of an earlier
        release)."""
        return instance.code or self.code.get(instance.version_id, "")


def apply_message(view: ConfigView, message: pb.WatchConfigResponse) -> ConfigView:
    """Return the view a WatchConfig message leads to (a snapshot replaces everything).

    A delta costs what it touches, not the size of the configuration: the new view's maps
    share every entry it leaves alone with the old view's.
    """
    base = ConfigView() if message.reset else view
    sources = base.sources.mutate()
    instances = base.instances.mutate()
    by_write_key = base.sources_by_write_key.mutate()
    by_source = base.instances_by_source.mutate()
    code = base.code.mutate()
    runs = base.runs.mutate()
    let_go: list[str] = []  # versions of replaced instances, forgotten once none runs them
    for source_id in [*message.removed_source_ids, *(s.id for s in message.sources)]:
        old = sources.pop(source_id, None)
        if old is not None and by_write_key.get(old.write_key) is old:
            del by_write_key[old.write_key]
    for source in message.sources:
        sources[source.id] = source
        if source.write_key:
            by_write_key[source.write_key] = source
    # Per touched source id, the ids of instances that may belong to it now.
    candidates: dict[str, set[str]] = {}
    for instance_id in message.removed_instance_ids:
        old = instances.pop(instance_id, None)
        if old is not None:
            candidates.setdefault(old.source_id, set())
            let_go.append(old.version_id)
    for instance in message.instances:
        old = instances.get(instance.id)
        if old is not None:
            candidates.setdefault(old.source_id, set())
            let_go.append(old.version_id)
        instances[instance.id] = instance
        runs[instance.version_id] = runs.get(instance.version_id, 0) + 1
        candidates.setdefault(instance.source_id, set()).add(instance.id)
    for version in message.versions:
        code[version.id] = version.code
    for version_id in let_go:
        left = runs.get(version_id, 0) - 1
        if left > 0:
            runs[version_id] = left
        else:
            runs.pop(version_id, None)
            code.pop(version_id, None)
    for source_id, ids in candidates.items():
        ids.update(i.id for i in by_source.pop(source_id, ()))
        members = [
            instances[i] for i in ids if i in instances and instances[i].source_id == source_id
        ]
        if members:
            # Sorted by id so routing order does not depend on delta order.
            by_source[source_id] = tuple(sorted(members, key=lambda i: i.id))
    return ConfigView(
        revision=message.revision,
        sources=sources.finish(),
        sources_by_write_key=by_write_key.finish(),
        instances=instances.finish(),
        instances_by_source=by_source.finish(),
        code=code.finish(),
        runs=runs.finish(),
        changed_sources=None
        if message.reset
        else frozenset(
            [*message.removed_source_ids, *(s.id for s in message.sources), *candidates]
        ),
    )


class ConfigWatcher:
    """Follow WatchConfig in the background; `view` is always a complete revision."""

    def __init__(
        self,
        registry_addr: str,
        service_token: str,
        name: str,
        *,
        on_change: Callable[[ConfigView], None] | None = None,
        min_backoff: float = 0.1,
        max_backoff: float = 10.0,
    ) -> None:
        self._addr = registry_addr
        self._token = service_token
        self._name = name
        self._on_change = on_change
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self.view = ConfigView()
        self.ready = asyncio.Event()
        self.connected = False
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    @property
    def revision(self) -> int:
        """Return the revision of the current view (0 before the first snapshot)."""
        return self.view.revision

    @property
    def sources(self) -> Mapping[str, pb.SourceConfig]:
        """Return sources by id."""
        return self.view.sources

    @property
    def sources_by_write_key(self) -> Mapping[str, pb.SourceConfig]:
        """Return sources by their current write key."""
        return self.view.sources_by_write_key

    @property
    def instances(self) -> Mapping[str, pb.InstanceConfig]:
        """Return instances by id."""
        return self.view.instances

    def instance_workspace(self, instance_id: str) -> str | None:
        """Return the workspace of an instance; None when it is not (or no longer) known."""
        config = self.view.instances.get(instance_id)
        return config.workspace_id if config is not None else None

    def source_workspace(self, source_id: str) -> str | None:
        """Return the workspace of a source; None when it is not (or no longer) known."""
        config = self.view.sources.get(source_id)
        return config.workspace_id if config is not None else None

    @property
    def instances_by_source(self) -> Mapping[str, tuple[pb.InstanceConfig, ...]]:
        """Return the instances connected to each source id."""
        return self.view.instances_by_source

    def start(self) -> None:
        """Start following the stream in a background task."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"config-watch-{self._name}")

    async def close(self) -> None:
        """Stop following the stream."""
        await tasks.stop(self._task)
        self._task = None

    async def wait_for_revision(self, revision: int) -> ConfigView:
        """Wait until the view has reached at least `revision`, then return it."""
        return await self.wait_until(lambda view: view.revision >= revision)

    async def wait_until(self, predicate: Callable[[ConfigView], bool]) -> ConfigView:
        """Wait until a view satisfies `predicate` (checked on every change), then return it."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.ready.is_set() and predicate(self.view))
        return self.view

    async def _run(self) -> None:
        """Follow the stream forever, reconnecting with backoff."""
        delay = self._min_backoff
        while True:
            try:
                async with grpc.aio.insecure_channel(
                    self._addr,
                    options=CLIENT_OPTIONS,
                    interceptors=client_interceptors(),
                ) as channel:
                    stub = registry_pb2_grpc.RegistryStub(channel)
                    call = stub.WatchConfig(
                        pb.WatchConfigRequest(watcher=self._name, code_by_version=True),
                        metadata=(("authorization", f"Bearer {self._token}"),),
                    )
                    pending: pb.WatchConfigResponse | None = None
                    async for message in call:
                        if pending is not None:
                            pending.MergeFrom(message)  # repeated fields append
                            pending.more = message.more  # a false scalar does not merge
                            message = pending
                        if message.more:
                            pending = message
                            continue
                        pending = None
                        await self._apply(message)
                        self.connected = True
                        delay = self._min_backoff
                log.warning("WatchConfig stream ended; reconnecting")
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "WatchConfig to %s failed: %s %s; retrying in %.1fs",
                    self._addr,
                    exc.code().name,
                    exc.details(),
                    delay,
                )
            except Exception:
                log.exception("WatchConfig handling failed; retrying in %.1fs", delay)
            self.connected = False
            await asyncio.sleep(delay * _JITTER.uniform(0.5, 1.0))
            delay = min(delay * 2, self._max_backoff)

    async def _apply(self, message: pb.WatchConfigResponse) -> None:
        """Swap in the view the message leads to and tell who listens."""
        if not message.reset and not self.ready.is_set():
            log.warning("WatchConfig delta before any snapshot; ignored")
            return
        view = apply_message(self.view, message)
        if self._on_change is not None:
            # Derived state (compiled routes) is built before the view is published.
            self._on_change(view)
        self.view = view
        self.ready.set()
        async with self._changed:
            self._changed.notify_all()
        log.debug(
            "config revision %d: %d sources, %d instances",
            view.revision,
            len(view.sources),
            len(view.instances),
        )
