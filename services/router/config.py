"""The router's compiled view of the registry configuration: routes per write key.

Built once per WatchConfig revision (`RouteTable.build`), never per event. Filters of an
instance are parsed once per instance revision: a rebuild reuses the compiled filters of
every instance whose revision did not change.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

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
    by_write_key: Mapping[str, SourceRoutes]

    @classmethod
    def build(cls, view: ConfigView, previous: RouteTable | None = None) -> RouteTable:
        """Compile a view, reusing the previous table's routes of unchanged instances."""
        known: dict[str, Route] = {}
        if previous is not None:
            for source in previous.by_write_key.values():
                for route in source.routes:
                    known[route.instance_id] = route
        by_write_key: dict[str, SourceRoutes] = {}
        for write_key, source in view.sources_by_write_key.items():
            routes = []
            for instance in view.instances_by_source.get(source.id, ()):
                if not instance.enabled:
                    continue
                route = known.get(instance.id)
                if route is None or route.revision != instance.revision:
                    route = compile_route(instance)
                if route is not None:
                    routes.append(route)
            by_write_key[write_key] = SourceRoutes(source.id, source.workspace_id, tuple(routes))
        return cls(view.revision, by_write_key)


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
