"""What one change costs a data-plane process's copy of the configuration, by its size.

The router, the executors and the retriers apply every WatchConfig delta to their view
(`apply_message`); the router also rebuilds its route table from it (`RouteTable.build`).
Timed here in this process on synthetic configurations (one instance per source), each change
adding an instance to a source: the /proc figures of the platform run count 10-ms ticks, too
coarse for a change that costs microseconds.
"""

from __future__ import annotations

import os
import time

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common.config_watch import ConfigView, apply_message
from services.router.config import RouteTable

SIZES = tuple(
    int(n) for n in os.environ.get("BENCH_CONFIG_APPLY_SIZES", "100,1000,10000,100000").split(",")
)
CHANGES = 500


def _snapshot(size: int) -> pb.WatchConfigResponse:
    message = pb.WatchConfigResponse(revision=1, reset=True)
    for i in range(size):
        message.sources.add(id=f"src{i}", workspace_id="ws", write_key=f"key{i}")
        message.instances.add(
            id=f"ins{i}", source_id=f"src{i}", workspace_id="ws", function_id="fn", enabled=True
        )
    return message


def _per_change(size: int) -> float:
    """Return the CPU µs of applying one delta and rebuilding the route table from it."""
    view = apply_message(ConfigView(), _snapshot(size))
    table = RouteTable.build(view)
    deltas = []
    for n in range(CHANGES):
        delta = pb.WatchConfigResponse(revision=2 + n)
        delta.instances.add(
            id=f"new{n}", source_id=f"src{n % size}", workspace_id="ws", function_id="fn"
        )
        deltas.append(delta)
    started = time.process_time()
    for delta in deltas:
        view = apply_message(view, delta)
        table = RouteTable.build(view, table)
    return (time.process_time() - started) / CHANGES * 1e6


def print_apply_costs() -> None:
    """Print the cost per change at each size, with its ratio to the smallest size's."""
    baseline = 0.0
    for size in SIZES:
        cost = _per_change(size)
        baseline = baseline or cost
        print(
            f"{size:>7} instances: a change applied to the view and the route table "
            f"{cost:8.1f} µs  ({cost / baseline:.2f}x)",
            flush=True,
        )
