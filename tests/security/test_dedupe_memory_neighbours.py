"""One tenant's new messageIds flushed its neighbours' from the router's memory of recent ids
(which drops a client's retry of a request whose events went out in a merged pack): the store
was one 200k set for every instance, so a write key sending 200k new ids made every other
tenant's clients' retries be stored twice. With the router's defaults, a flood now forgets its
own ids only."""

from __future__ import annotations

from services.router.coalesce import RecentIds


def test_a_flood_of_new_ids_leaves_a_neighbours_recent_ids_remembered() -> None:
    recent = RecentIds()  # as the router makes it
    recent.add("ins_neighbour", [f"n-{i}" for i in range(100)])
    for request in range(2_500):  # 250,000 new ids, 100 a request
        recent.add("ins_flood", [f"f-{request}-{i}" for i in range(100)])
    neighbour = [f"n-{i}" for i in range(100)]
    assert recent.seen("ins_neighbour", neighbour) == set(neighbour)
    assert recent.seen("ins_flood", ["f-2499-0"]) == {"f-2499-0"}
