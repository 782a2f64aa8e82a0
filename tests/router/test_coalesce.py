"""Group commit: packs of concurrent requests merge without losing, reordering or splitting
events; merged packs keep a dedupe id of their own and link the other requests' traces."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.common.packs import dedupe_id, merged_dedupe_id, pack_events
from services.common.streams import COUNT, MSG_ID, TRACE_LINKS, TRACEPARENT
from services.router.coalesce import (
    BUSY_RATE,
    HOLD_EVENTS,
    Coalescer,
    Outbound,
    Publish,
    RecentIds,
    merge,
)
from services.router.settings import RouterSettings

SUBJECT = "events.ws_1.ins_1"


def outbound(ids: list[str], parent: str = "") -> Outbound:
    [pack] = pack_events("ins_1", [{"messageId": i, "pad": "x" * 10} for i in ids])
    headers = {MSG_ID: pack.dedupe_id, COUNT: str(pack.count)}
    if parent:
        headers[TRACEPARENT] = parent
    return Outbound(SUBJECT, "ins_1", pack, headers)


def _recording(
    release: asyncio.Event | None = None,
) -> tuple[list[list[str]], Publish]:
    """A publish that records each message's messageIds; acknowledged at once, or when
    `release` is set."""
    published: list[list[str]] = []

    async def publish(subject: str, body: bytes, headers: dict[str, str]) -> asyncio.Future[None]:
        published.append([e["messageId"] for e in orjson.loads(body)])
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if release is None:
            ack.set_result(None)
        else:
            waiter = asyncio.ensure_future(release.wait())
            waiter.add_done_callback(lambda _: ack.set_result(None))
        return ack

    return published, publish


requests = st.lists(
    st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=5), min_size=1, max_size=8
)


@given(requests, st.integers(min_value=40, max_value=400))
def test_merging_keeps_every_event_in_order_within_the_cap(
    batches: list[list[str]], cap: int
) -> None:
    items = [outbound(ids) for ids in batches]
    merged = merge("ins_1", items, cap)
    events = [e["messageId"] for m in merged for e in orjson.loads(m.pack.body)]
    assert events == [i for ids in batches for i in ids]
    for m in merged:
        body = orjson.loads(m.pack.body)
        assert m.pack.count == len(body) == int(m.headers[COUNT])
        assert m.headers[MSG_ID] == m.pack.dedupe_id
        # Only a request's own pack may pass the cap, alone.
        assert len(m.pack.body) <= cap or m.pack.body in {i.pack.body for i in items}


@given(requests, requests)
def test_merged_packs_have_ids_of_their_own(
    first: list[list[str]], second: list[list[str]]
) -> None:
    a = merge("ins_1", [outbound(ids) for ids in first], 1_000_000)
    b = merge("ins_1", [outbound(ids) for ids in second], 1_000_000)
    assert [m.pack.dedupe_id for m in a] == [
        m.pack.dedupe_id for m in merge("ins_1", [outbound(ids) for ids in first], 1_000_000)
    ]
    ids_a = [i for ids in first for i in ids]
    # Equal only for the same requests; never the id of one request holding the same events.
    assert (a[0].pack.dedupe_id == b[0].pack.dedupe_id) == (first == second)
    if len(first) > 1:
        assert a[0].pack.dedupe_id != dedupe_id("ins_1", ids_a)
        assert a[0].pack.dedupe_id == merged_dedupe_id("ins_1", [outbound(i).pack for i in first])


def test_a_merged_pack_links_the_other_requests_traces() -> None:
    a = outbound(["a"], "00-" + "1" * 32 + "-" + "1" * 16 + "-01")
    b = outbound(["b"], "00-" + "2" * 32 + "-" + "2" * 16 + "-01")
    [m] = merge("ins_1", [a, b], 10_000)
    assert m.headers[TRACEPARENT] == a.headers[TRACEPARENT]
    assert orjson.loads(m.headers[TRACE_LINKS]) == [b.headers[TRACEPARENT]]


def test_recent_ids_forget_past_the_limit_oldest_first() -> None:
    recent = RecentIds(seconds=60, limit=4)
    for batch in (["a", "b"], ["c", "d"], ["e", "f"]):
        recent.add("ins_1", batch)
    assert recent.seen("ins_1", ["a", "f", "z"]) == {"f"}  # 6 ids into room for 4: "a" went
    assert not recent.seen("ins_2", ["f"])


def test_an_instance_flooding_ids_forgets_its_own_not_its_neighbours() -> None:
    recent = RecentIds(seconds=60, limit=10, total=1000)
    recent.add("ins_quiet", ["q1", "q2"])
    for i in range(100):  # ten times its limit
        recent.add("ins_flood", [f"f{i}"])
    assert recent.seen("ins_quiet", ["q1", "q2"]) == {"q1", "q2"}
    assert recent.seen("ins_flood", ["f0", "f99"]) == {"f99"}


def test_past_the_total_the_instance_holding_most_forgets_first() -> None:
    recent = RecentIds(seconds=60, limit=6, total=8)
    recent.add("ins_a", ["a1", "a2"])
    recent.add("ins_b", ["b1", "b2"])
    for i in range(8):
        recent.add("ins_big", [f"big{i}"])
    assert recent.seen("ins_a", ["a1", "a2"]) == {"a1", "a2"}
    assert recent.seen("ins_b", ["b1", "b2"]) == {"b1", "b2"}
    assert recent.seen("ins_big", ["big0", "big7"]) == {"big7"}


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 15)), min_size=1, max_size=60))
def test_recent_ids_hold_at_most_their_total_and_always_the_newest_request(
    adds: list[tuple[int, int]],
) -> None:
    recent = RecentIds(seconds=60, limit=20, total=40)
    added: dict[str, list[str]] = {}
    for n, (instance, count) in enumerate(adds):
        ids = [f"m{n}-{i}" for i in range(count)]
        recent.add(f"ins_{instance}", ids)
        added.setdefault(f"ins_{instance}", []).extend(ids)
        assert recent.seen(f"ins_{instance}", ids) == set(ids)
        held = sum(len(recent.seen(name, ids)) for name, ids in added.items())
        assert held <= 40


@given(st.lists(st.floats(min_value=0, max_value=25), min_size=1, max_size=40))
def test_recent_ids_remember_at_least_their_window_and_forget_after_twice_it(
    gaps: list[float],
) -> None:
    now = [0.0]
    recent = RecentIds(seconds=10, clock=lambda: now[0])
    stored: dict[str, float] = {}
    for i, gap in enumerate(gaps):
        now[0] += gap
        for message_id, at in stored.items():
            age = now[0] - at
            if age < 10:
                assert recent.seen("ins_1", [message_id]), (message_id, age)
            elif age >= 20:
                assert not recent.seen("ins_1", [message_id]), (message_id, age)
        recent.add("ins_1", [f"m{i}"])
        stored[f"m{i}"] = now[0]


def scaled(publish: Publish, window: float, max_bytes: int = 100_000) -> Coalescer:
    """A coalescer with a long window (a stall of a loaded machine is not taken for a wait)
    holding from two requests per window, however slow that rate."""
    return Coalescer(
        publish,
        max_bytes=max_bytes,
        timeout=5,
        recent=RecentIds(),
        window=window,
        busy_rate=2 / window,
    )


async def test_requests_arriving_during_a_publish_share_the_next_message() -> None:
    release = asyncio.Event()
    published, publish = _recording(release)
    coalescer = Coalescer(publish, max_bytes=100_000, timeout=5, recent=RecentIds())
    first = coalescer.submit(outbound(["r0"]))
    await asyncio.sleep(0)  # the first publish is in flight
    others = [coalescer.submit(outbound([f"r{i}"])) for i in range(1, 6)]
    assert published == [["r0"]] and not first.done()
    release.set()
    await asyncio.gather(first, *others)
    assert published == [["r0"], [f"r{i}" for i in range(1, 6)]]
    assert coalescer.recent.seen("ins_1", [f"r{i}" for i in range(7)]) == {
        f"r{i}" for i in range(6)
    }


def test_a_merged_pack_fills_the_cap_exactly_and_never_passes_it() -> None:
    items = [outbound([f"m{i}"]) for i in range(4)]
    whole = len(merge("ins_1", items, 10_000)[0].pack.body)
    assert len(merge("ins_1", items, whole)) == 1
    assert len(merge("ins_1", items, whole - 1)) == 2


async def test_a_window_opens_only_while_requests_come_at_least_twice_per_window() -> None:
    """Requests coming at least twice per window wait for each other and share a message; a
    request after a quiet spell is published at once (low rates keep their latency)."""
    published, publish = _recording()
    window = 0.5  # long, so that a stall of a loaded machine is not taken for a wait
    coalescer = scaled(publish, window)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await coalescer.submit(outbound(["first"]))  # nothing came before: no window
    assert loop.time() - started < window / 2 and published == [["first"]]

    # The next comes at once (a gap far under the window): it waits for the window, and the
    # one after it joins the same message.
    second = coalescer.submit(outbound(["second"]))
    await asyncio.sleep(0)
    third = coalescer.submit(outbound(["third"]))
    await asyncio.gather(second, third)
    assert published == [["first"], ["second", "third"]]

    # A quiet spell brings the running average gap above the window: no waiting.
    await asyncio.sleep(window * 4)
    started = loop.time()
    await coalescer.submit(outbound(["later"]))
    assert published[-1] == ["later"]
    assert loop.time() - started < window / 2


async def test_requests_coming_less_than_twice_per_window_never_wait() -> None:
    """At a steady rate under two requests per window (75 requests/s against the default
    20 ms), each request's pack goes out at once: the window would cost them latency and
    gather almost nothing."""
    published, publish = _recording()
    window = 1.0  # long, so that a stall of a loaded machine is not taken for a wait
    coalescer = scaled(publish, window)
    loop = asyncio.get_running_loop()
    for i in range(4):
        if i:
            await asyncio.sleep(0.6 * window)  # gaps between half the window and the window
        started = loop.time()
        await coalescer.submit(outbound([f"r{i}"]))
        assert loop.time() - started < window / 2
    assert published == [[f"r{i}"] for i in range(4)]


async def test_requests_under_the_minimum_rate_never_wait_however_long_the_window() -> None:
    """Under 200 requests/s (gaps over 5 ms) nothing waits, even with a window long enough to
    hold them: a window of 20 ms would otherwise hold requests from 100/s."""
    published, publish = _recording()
    window = 1.0
    coalescer = Coalescer(publish, max_bytes=100_000, timeout=5, recent=RecentIds(), window=window)
    loop = asyncio.get_running_loop()
    for i in range(4):
        if i:
            await asyncio.sleep(4 / BUSY_RATE)  # far under half the window
        started = loop.time()
        await coalescer.submit(outbound([f"r{i}"]))
        assert loop.time() - started < window / 2
    assert published == [[f"r{i}"] for i in range(4)]


async def test_a_sender_alone_is_never_held_however_fast_it_sends() -> None:
    """One connection sending request after request (each after the last one's answer) could
    never add to a window: its requests go out at once, one message each."""
    published, publish = _recording()
    window = 1.0
    coalescer = scaled(publish, window)
    loop = asyncio.get_running_loop()
    for i in range(6):
        started = loop.time()
        await coalescer.submit(outbound([f"r{i}"]), sender=("10.0.0.1", 5000))
        assert loop.time() - started < window / 2
    assert published == [[f"r{i}"] for i in range(6)]


async def test_a_window_closes_once_every_recent_sender_has_a_pack_in_it() -> None:
    """Three connections sending in step: the first request of a round waits for the other
    two, and the round leaves in one message as soon as they are in, not when the window
    ends."""
    published, publish = _recording()
    window = 1.0
    coalescer = scaled(publish, window)
    loop = asyncio.get_running_loop()
    senders = [("10.0.0.1", port) for port in (5000, 5001, 5002)]
    for round_ in range(3):
        started = loop.time()
        await asyncio.gather(
            *(
                coalescer.submit(outbound([f"{round_}-{n}"]), sender=s)
                for n, s in enumerate(senders)
            )
        )
        assert loop.time() - started < window / 2
    # Rounds after the first open a window (three senders are known), which each round's
    # last request closes.
    assert published == [[f"{r}-{n}" for n in range(3)] for r in range(3)]


async def test_packs_arriving_during_a_publish_are_held_for_a_window_too() -> None:
    """At a high rate the packs that came during a publish are not sent the moment it is
    acknowledged: they wait until the oldest of them has waited a window, gathering more."""
    release = asyncio.Event()
    published, publish = _recording(release)
    window = 0.4
    coalescer = scaled(publish, window)
    loop = asyncio.get_running_loop()
    first = coalescer.submit(outbound(["r0"]))  # nothing came before: published at once
    await asyncio.sleep(0)
    held = loop.time()
    second = coalescer.submit(outbound(["r1"]))  # right after: the rate is high
    release.set()
    await first
    await asyncio.sleep(window / 4)
    third = coalescer.submit(outbound(["r2"]))
    await asyncio.gather(second, third)
    assert published == [["r0"], ["r1", "r2"]]
    assert loop.time() - held >= window * 0.9


async def test_packs_of_a_hundred_events_are_never_held() -> None:
    """Batches of 100 share their message's costs already: however fast they come, none
    waits for more."""
    published, publish = _recording()
    window = 1.0
    coalescer = scaled(publish, window, max_bytes=1_000_000)
    loop = asyncio.get_running_loop()
    for round_ in range(4):
        started = loop.time()
        await asyncio.gather(
            *(
                coalescer.submit(outbound([f"{round_}-{n}-{i}" for i in range(HOLD_EVENTS)]))
                for n in range(2)
            )
        )
        assert loop.time() - started < window / 2
    assert sum(len(ids) for ids in published) == 8 * HOLD_EVENTS


async def test_a_peers_concurrent_calls_wait_for_each_other_and_share_a_message() -> None:
    """A gRPC peer keeping four calls of 100 events under way: once seen doing so, each round
    of its calls, coming one after another, leaves in one message as soon as the fourth is
    in (not one message per call, and not at the window's end)."""
    published, publish = _recording()
    window = 1.0
    coalescer = scaled(publish, window, max_bytes=1_000_000)
    loop = asyncio.get_running_loop()
    peer = "ipv4:10.0.0.1:5000"

    def call(round_: int, n: int) -> asyncio.Future[None]:
        ids = [f"{round_}-{n}-{i}" for i in range(HOLD_EVENTS)]
        return coalescer.submit(outbound(ids), sender=peer)

    await asyncio.gather(*(call(0, n) for n in range(4)))  # four under way at once
    for round_ in range(1, 4):
        started = loop.time()
        calls = []
        for n in range(4):
            calls.append(call(round_, n))
            await asyncio.sleep(0)  # the drain runs between two calls
        await asyncio.gather(*calls)
        assert loop.time() - started < window / 2
    assert [len(ids) for ids in published] == [4 * HOLD_EVENTS] * 4


async def test_a_request_of_several_packs_counts_as_one_request_under_way() -> None:
    """A connection whose request filled two packs for one instance (a small pack cap) keeps
    one request under way, not two: its next requests, one pack each, are not held for a
    second one that will never come."""
    published, publish = _recording()
    window = 1.0
    coalescer = scaled(publish, window)
    loop = asyncio.get_running_loop()
    connection = ("10.0.0.1", 5000)
    await asyncio.gather(
        coalescer.submit(outbound(["big-0"]), sender=connection),
        coalescer.submit(outbound(["big-1"]), sender=connection, continues=True),
    )
    for i in range(3):
        started = loop.time()
        await coalescer.submit(outbound([f"r{i}"]), sender=connection)
        assert loop.time() - started < window / 2
    assert published[-3:] == [[f"r{i}"] for i in range(3)]


async def test_a_request_given_up_on_no_longer_counts_as_under_way() -> None:
    """A connection whose request timed out (its pack still in flight) sends it again: it
    still keeps one request under way, and its requests are not held for a second one."""
    release = asyncio.Event()
    _, publish = _recording(release)
    window = 1.0
    coalescer = scaled(publish, window)
    loop = asyncio.get_running_loop()
    connection = ("10.0.0.1", 5000)
    first = coalescer.submit(outbound(["r0"]), sender=connection)
    await asyncio.sleep(0)  # in flight, never acknowledged in time
    first.cancel()  # the router answered 503 (what Ingestor._publish_all does on a timeout)
    await asyncio.sleep(0)  # the client's retry comes after the answer
    started = loop.time()
    retry = coalescer.submit(outbound(["r0"]), sender=connection)
    release.set()
    await retry
    assert loop.time() - started < window / 2
    for i in range(1, 4):
        started = loop.time()
        await coalescer.submit(outbound([f"r{i}"]), sender=connection)
        assert loop.time() - started < window / 2


async def test_a_peers_calls_under_way_do_not_hold_another_senders_full_pack() -> None:
    """A gRPC peer whose calls are still coming waits for them, but an HTTP connection's batch
    of 100 events in the same lane is not held for them."""
    _, publish = _recording()
    window = 1.0
    coalescer = scaled(publish, window, max_bytes=1_000_000)
    loop = asyncio.get_running_loop()
    peer = "ipv4:10.0.0.1:5000"
    ids = iter(range(1_000_000))

    def pack(events: int) -> Outbound:
        return outbound([str(next(ids)) for _ in range(events)])

    await asyncio.gather(*(coalescer.submit(pack(1), sender=peer) for _ in range(4)))
    held = coalescer.submit(pack(1), sender=peer)  # one of four: the peer's others are due
    started = loop.time()
    await coalescer.submit(pack(HOLD_EVENTS), sender=("10.0.0.2", 6000))
    assert loop.time() - started < window / 2
    await held


async def test_a_peers_full_pack_is_not_held_for_another_sender() -> None:
    """Packs of 100 events from one peer wait for that peer's own calls only: a second
    sender seen lately does not hold them (holding one client's batch for another's would
    only add to its latency)."""
    published, publish = _recording()
    window = 1.0
    coalescer = scaled(publish, window, max_bytes=1_000_000)
    loop = asyncio.get_running_loop()
    ids = iter(range(1_000_000))

    def call(sender: str) -> asyncio.Future[None]:
        return coalescer.submit(
            outbound([str(next(ids)) for _ in range(HOLD_EVENTS)]), sender=sender
        )

    await asyncio.gather(call("a"), call("b"))  # both senders known, each one call at a time
    for _ in range(3):
        started = loop.time()
        await call("a")
        assert loop.time() - started < window / 2
    assert [len(ids) for ids in published][-3:] == [HOLD_EVENTS] * 3


@pytest.mark.parametrize("value", ["-1", "1000", "soon"])
def test_a_window_out_of_range_is_refused_at_start(value: str) -> None:
    with pytest.raises(ValidationError, match="router_coalesce_window_ms"):
        RouterSettings.model_validate({"router_coalesce_window_ms": value})


@pytest.mark.parametrize("value", ["0", "-200", "often"])
def test_a_minimum_rate_that_is_not_positive_is_refused_at_start(value: str) -> None:
    with pytest.raises(ValidationError, match="router_coalesce_min_rate"):
        RouterSettings.model_validate({"router_coalesce_min_rate": value})
