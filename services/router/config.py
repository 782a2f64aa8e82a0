"""The router's compiled view of the registry configuration: routes per write key.

Built once per WatchConfig revision (`RouteTable.build`), never per event. Filters of an
instance are parsed once per instance revision: a rebuild reuses the compiled filters of
every instance whose revision did not change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from immutables import Map, MapMutation

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common.config_watch import ConfigView
from services.common.streams import events_subject
from services.filters.actions import CompiledFilter, parse_filter
from services.filters.errors import FilterSyntaxError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a source's events may go: one enabled instance with its compiled filters."""

    instance_id: str
    workspace_id: str
    function_id: str
    subject: str
    integration_key: str
    filters: tuple[CompiledFilter, ...]
    revision: int


@dataclass(frozen=True, slots=True)
class SourceRoutes:
    """A source (found by write key) and the routes of its enabled instances."""

    source_id: str
    workspace_id: str
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Everything routing needs at one config revision."""

    revision: int
    # Persistent maps (as the view's): a delta's table shares every untouched source with the
    # previous table, so a change costs what it touches, not the number of sources.
    by_write_key: Map[str, SourceRoutes]
    write_keys: Map[str, str]  # source id -> its write key in `by_write_key`

    @classmethod
    def build(cls, view: ConfigView, previous: RouteTable | None = None) -> RouteTable:
        """Compile a view: after a delta only the sources it changed, reusing the previous
        table's routes of instances whose revision did not change."""
        if previous is None or view.changed_sources is None:
            by_write_key: MapMutation[str, SourceRoutes] = Map().mutate()
            write_keys: MapMutation[str, str] = Map().mutate()
            changed: Iterable[str] = view.sources.keys()
            old = previous.by_write_key.values() if previous is not None else ()
            known = {route.instance_id: route for source in old for route in source.routes}
        else:
            by_write_key = previous.by_write_key.mutate()
            write_keys = previous.write_keys.mutate()
            changed = view.changed_sources
            known = {}
            for source_id in changed:
                source = by_write_key.get(write_keys.get(source_id, ""))
                if source is not None:
                    known.update((r.instance_id, r) for r in source.routes)
        for source_id in changed:  # all out first: a write key may pass between two sources
            old_key = write_keys.pop(source_id, None)
            if old_key is not None:
                by_write_key.pop(old_key, None)
        for source_id in changed:
            source = view.sources.get(source_id)
            if source is None or not source.write_key:
                continue
            routes = []
            for instance in view.instances_by_source.get(source_id, ()):
                if not instance.enabled:
                    continue
                route = known.get(instance.id)
                if route is None or route.revision != instance.revision:
                    route = compile_route(instance)
                if route is not None:
                    routes.append(route)
            by_write_key[source.write_key] = SourceRoutes(
                source.id, source.workspace_id, tuple(routes)
            )
            write_keys[source_id] = source.write_key
        return cls(view.revision, by_write_key.finish(), write_keys.finish())


def compile_route(instance: pb.InstanceConfig) -> Route | None:
    """Compile one instance; None (logged) when a stored filter does not parse."""
    filters = []
    for index, text in enumerate(instance.filters):
        try:
            filters.append(parse_filter(text))
        except FilterSyntaxError as exc:
            # The registry validates filters on save, so this means a registry bug or an
            # old row; holding the instance's events back is safer than ignoring its filter.
            log.error(
                "instance %s: filter %d does not parse (%s); its events are not routed",
                instance.id,
                index,
                exc,
            )
            return None
    return Route(
        instance_id=instance.id,
        workspace_id=instance.workspace_id,
        function_id=instance.function_id,
        subject=events_subject(instance.workspace_id, instance.id),
        integration_key=instance.integration_key,
        filters=tuple(filters),
        revision=instance.revision,
    )
