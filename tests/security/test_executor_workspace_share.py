"""A tenant holding an executor's packs in flight with several instances. One instance holds at
most a quarter of the slots (`test_executor_fair_share.py`), but the share was an instance's
only: four instances that wait out their timeout, on one source, held every slot, the consumer
stopped pulling, and another workspace's event waited until their packs ran out (40 s with
four packs each over their share, minutes with a backlog). A workspace held at most half of the
slots then, so two such tenants filled them all; a workspace's share now is the slots divided
among the busy workspaces and one more."""

from __future__ import annotations

from pathlib import Path

from tests.pipeline.conftest import Sink, platform_on_own_nats, sink
from tests.registry.conftest import Registry, registry

__all__ = ["registry", "sink"]

STALLS = "async function onTrack() { await new Promise((ok) => setTimeout(ok, 600000)) }"
DELIVERS = """async function onTrack(event, settings) {
  await fetch(settings.endpoint, {method: 'POST', body: JSON.stringify(event)})
}"""


async def test_a_workspace_whose_instances_all_stall_leaves_slots_to_other_workspaces(
    registry: Registry, sink: Sink, tmp_path: Path
) -> None:
    # 16 packs in flight, an instance's share 4 (twice its 2 invocations at once).
    async with platform_on_own_nats(
        registry,
        tmp_path,
        executor_max_inflight_packs=16,
        executor_instance_concurrency=2,
        executor_shutdown_grace_seconds=0.5,  # the stalled invocations are not waited for
    ) as (stalling, _):
        for _ in range(4):
            await stalling.instance(STALLS, "http://127.0.0.1:9/", timeout_ms=20_000)
        for i in range(10):  # a pack for each instance each: 40, the slots 2.5 times over
            sent = await stalling.http.post(
                "/v1/track",
                auth=(stalling.write_key, ""),
                json={"userId": "u", "event": "stall", "messageId": f"stall-{i}"},
            )
            assert sent.status_code == 200
        neighbour = await stalling.neighbour()
        await neighbour.instance(DELIVERS, sink.url)
        sent = await neighbour.http.post(
            "/v1/track",
            auth=(neighbour.write_key, ""),
            json={"userId": "v", "event": "neighbour", "messageId": "neighbour-1"},
        )
        assert sent.status_code == 200
        await sink.wait_for(1, seconds=10)
        assert stalling.executor.consumer.in_flight <= 16 // 2 + 1  # its half, and the neighbour's


async def test_two_workspaces_whose_instances_all_stall_leave_slots_to_a_third(
    registry: Registry, sink: Sink, tmp_path: Path
) -> None:
    # 16 packs in flight; an instance's share 4, so two instances filled a workspace's half.
    async with platform_on_own_nats(
        registry,
        tmp_path,
        executor_max_inflight_packs=16,
        executor_instance_concurrency=2,
        executor_shutdown_grace_seconds=0.5,
    ) as (first, _):
        second = await first.neighbour()
        for tenant in (first, second):
            for _ in range(2):
                await tenant.instance(STALLS, "http://127.0.0.1:9/", timeout_ms=20_000)
        for i in range(10):  # 20 packs a workspace, 40 in all
            for tenant in (first, second):
                sent = await tenant.http.post(
                    "/v1/track",
                    auth=(tenant.write_key, ""),
                    json={"userId": "u", "event": "stall", "messageId": f"stall-{i}"},
                )
                assert sent.status_code == 200
        third = await first.neighbour()
        await third.instance(DELIVERS, sink.url)
        sent = await third.http.post(
            "/v1/track",
            auth=(third.write_key, ""),
            json={"userId": "v", "event": "third", "messageId": "third-1"},
        )
        assert sent.status_code == 200
        await sink.wait_for(1, seconds=10)
