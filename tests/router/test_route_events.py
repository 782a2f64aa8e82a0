"""Routing a request's events to packs: every instance gets the events its integrations
object lets it have, in order, packed as the per-event packer packs them, and a client's
retries are not published again."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from services.common.packs import pack_events
from services.common.streams import COUNT, MESSAGE_IDS, MSG_ID
from services.router.config import Route
from services.router.integrations import wants
from services.router.publisher import RouterStats, route_events

TRACE = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
# F3 and F4 are named by no event: they get the same events.
ROUTES = [
    Route(f"ins_{n}", "ws_1", f"fn_{n}", f"events.ws_1.ins_{n}", f"F{n} (W)", (), 1)
    for n in (1, 2, 3, 4)
]

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
integrations = st.one_of(
    st.none(),
    st.just({}),
    st.dictionaries(st.sampled_from(["All", "F1 (W)", "F2 (W)", "Other"]), st.booleans()),
)
events = st.lists(
    st.builds(
        lambda mid, pad, chosen: {
            "messageId": mid,
            "pad": pad,
            **({} if chosen is None else {"integrations": chosen}),
        },
        texts,
        texts,
        integrations,
    ),
    max_size=30,
)


def packed(routes: list[Route], sent: list[dict[str, Any]], cap: int, **kw: Any) -> list[Any]:
    return route_events(routes, sent, 7, TRACE, pack_bytes=cap, **kw)


@given(events, st.integers(min_value=2, max_value=400))
def test_each_instance_gets_what_the_per_event_packer_makes_of_its_events(
    sent: list[dict[str, Any]], cap: int
) -> None:
    dropped: Counter[str] = Counter()
    stats = RouterStats()
    out = packed(ROUTES, sent, cap, dropped=dropped, stats=stats)
    assert stats.dropped_by_integrations == sum(dropped.values())
    for route in ROUTES:
        wanted = [e for e in sent if wants(e, route.integration_key)]
        assert dropped[route.instance_id] == len(sent) - len(wanted)
        expected = pack_events(route.instance_id, wanted, max_bytes=cap)
        mine = [o for o in out if o.instance_id == route.instance_id]
        assert [(o.pack.body, o.pack.dedupe_id, o.pack.message_ids) for o in mine] == [
            (p.body, p.dedupe_id, p.message_ids) for p in expected
        ]
        for o in mine:
            assert o.subject == route.subject
            assert o.headers[MSG_ID] == o.pack.dedupe_id
            assert o.headers[COUNT] == str(len(o.pack.message_ids))
            assert orjson.loads(o.headers[MESSAGE_IDS]) == list(o.pack.message_ids[:16])


def test_events_stored_lately_for_an_instance_are_not_published_to_it_again() -> None:
    sent = [{"messageId": f"m{i}"} for i in range(4)]
    stats = RouterStats()

    def seen(instance_id: str, ids: Any) -> set[str]:
        return {"m1", "m3"} if instance_id == "ins_1" else set()

    out = packed(ROUTES[:2], sent, 1 << 20, seen=seen, stats=stats)
    by_instance = {o.instance_id: o.pack.message_ids for o in out}
    assert by_instance == {"ins_1": ("m0", "m2"), "ins_2": ("m0", "m1", "m2", "m3")}
    assert stats.deduplicated == 2


def test_events_an_integrations_object_turns_away_are_counted_for_that_instance() -> None:
    sent = [{"messageId": "a"}, {"messageId": "b", "integrations": {"F1 (W)": False}}]
    dropped: Counter[str] = Counter()
    out = packed(ROUTES[:2], sent, 1 << 20, dropped=dropped)
    assert {o.instance_id: o.pack.message_ids for o in out} == {
        "ins_1": ("a",),
        "ins_2": ("a", "b"),
    }
    assert dropped == Counter({"ins_1": 1})


def test_instances_no_event_names_share_the_bodies_of_their_packs() -> None:
    # 1,000 instances of a source, its events naming destinations: the events were chosen and
    # packed per instance, seconds of the router's loop for one request.
    routes = [
        Route(f"ins_{n}", "ws_1", f"fn_{n}", f"events.ws_1.ins_{n}", f"F{n} (W)", (), 1)
        for n in range(1000)
    ]
    named = {"All": True, "F0 (W)": False}
    sent = [{"messageId": f"m{i}", "integrations": named} for i in range(50)]
    out = packed(routes, sent, 1 << 20)
    assert len(out) == 999  # ins_0 is named, and wants none
    assert len({id(o.pack.body) for o in out}) == 1
    assert len({o.pack.dedupe_id for o in out}) == 999
