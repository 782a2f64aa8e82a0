"""The router's route table after a config delta equals one compiled from scratch, and a
delta recompiles only the instances whose revision changed."""

from __future__ import annotations

import itertools

from hypothesis import given, settings

from services.common.config_watch import ConfigView, apply_message
from services.router.config import RouteTable
from tests.common.test_config_view import delta, snapshot, states, unique_write_keys


def routes(table: RouteTable) -> dict[str, tuple[str, tuple[tuple[str, int], ...]]]:
    return {
        key: (source.source_id, tuple((r.instance_id, r.revision) for r in source.routes))
        for key, source in table.by_write_key.items()
    }


@settings(max_examples=300, deadline=None)
@given(states)
def test_a_delta_compiles_what_a_snapshot_would(sequence: list[tuple[dict, dict]]) -> None:
    sequence = [s for s in sequence if unique_write_keys(s)] or [({}, {})]
    view = apply_message(ConfigView(), snapshot(1, sequence[0]))
    table = RouteTable.build(view)
    for revision, (old, new) in enumerate(itertools.pairwise(sequence), start=2):
        view = apply_message(view, delta(revision, old, new))
        previous, table = table, RouteTable.build(view, table)
        assert routes(table) == routes(RouteTable.build(view))
        assert table.revision == revision
        # A route whose instance kept its revision is the same compiled object.
        before = {r.instance_id: r for s in previous.by_write_key.values() for r in s.routes}
        for source in table.by_write_key.values():
            for route in source.routes:
                kept = before.get(route.instance_id)
                if kept is not None and kept.revision == route.revision:
                    assert route is kept
