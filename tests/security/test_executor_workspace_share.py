"""A tenant holding an executor's packs in flight with several instances. One instance holds at
most a quarter of the slots (`test_executor_fair_share.py`), but the share was an instance's
only: four instances that wait out their timeout, on one source, held every slot, the consumer
stopped pulling, and another workspace's event waited until their packs ran out (40 s with
four packs each over their share, minutes with a backlog). A workspace held at most half of the
slots then, so two such tenants filled them all; a workspace's share now is the slots divided
among the busy workspaces and one more."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.pipeline.conftest import Platform, Sink, platform_on_own_nats, sink
from tests.registry.conftest import Registry, registry

__all__ = ["registry", "sink"]

STALLS = "async function onTrack() { await new Promise((ok) => setTimeout(ok, 600000)) }"
DELIVERS = """async function onTrack(event, settings) {
  await fetch(settings.endpoint, {method: 'POST', body: JSON.stringify(event)})
}"""


def small_executor(registry: Registry, directory: Path) -> Any:
    """A data path whose executor holds 16 packs in flight, an instance's share 4 (twice its 2
    invocations at once)."""
    return platform_on_own_nats(
        registry,
        directory,
        executor_max_inflight_packs=16,
        executor_instance_concurrency=2,
        executor_shutdown_grace_seconds=0.5,  # the stalled invocations are not waited for
    )


async def track(tenant: Platform, message_id: str) -> None:
    """Send one event to the tenant's source; it must be accepted."""
    sent = await tenant.http.post(
        "/v1/track",
        auth=(tenant.write_key, ""),
        json={"userId": "u", "event": "E", "messageId": message_id},
    )
    assert sent.status_code == 200


async def test_a_workspace_whose_instances_all_stall_leaves_slots_to_other_workspaces(
    registry: Registry, sink: Sink, tmp_path: Path
) -> None:
    async with small_executor(registry, tmp_path) as (stalling, _):
        for _ in range(4):
            await stalling.instance(STALLS, "http://127.0.0.1:9/", timeout_ms=20_000)
        for i in range(10):  # a pack for each instance each: 40, the slots 2.5 times over
            await track(stalling, f"stall-{i}")
        neighbour = await stalling.neighbour()
        await neighbour.instance(DELIVERS, sink.url)
        await track(neighbour, "neighbour-1")
        await sink.wait_for(1, seconds=10)
        assert stalling.executor.consumer.in_flight <= 16 // 2 + 1  # its half, and the neighbour's


async def test_two_workspaces_whose_instances_all_stall_leave_slots_to_a_third(
    registry: Registry, sink: Sink, tmp_path: Path
) -> None:
    # Two instances' shares filled a workspace's half of the slots: two workspaces filled all.
    async with small_executor(registry, tmp_path) as (first, _):
        second = await first.neighbour()
        for tenant in (first, second):
            for _ in range(2):
                await tenant.instance(STALLS, "http://127.0.0.1:9/", timeout_ms=20_000)
        for i in range(10):  # 20 packs a workspace, 40 in all
            for tenant in (first, second):
                await track(tenant, f"stall-{i}")
        third = await first.neighbour()
        await third.instance(DELIVERS, sink.url)
        await track(third, "third-1")
        await sink.wait_for(1, seconds=10)
