"""A tenant's destination filters run on the router's one event loop, for every tenant's
requests, and travel in the configuration every data-plane service watches. Before they were
bounded, one instance could hold 1,300 filters of 10,000 characters (its configuration message
passed the watchers' 16 MiB limit: no service got any tenant's change any more), or 50 `match`
globs with 9,900-`?` pieces (one 31 KB event held the router 10 s, every tenant's requests
with it)."""

from __future__ import annotations

import time

import grpc

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.filters import apply_filters, exceeded, parse_filter
from services.filters.limits import MAX_FILTERS, MAX_FILTERS_CHARS, WILDCARD_BUDGET
from tests.registry.conftest import Registry, auth, registry
from tests.registry.test_flows import expect, make_function, new_instance, settings, violations

__all__ = ["registry"]

VALUES = settings(endpoint="https://api.example.com", apiKey="k")
LONG_TEXT = "a" * 32_000  # an event string as long as an event may hold


def searching(question_marks: int) -> str:
    """A filter whose glob searches with a piece of `?`s as long as asked (plus 2)."""
    return f'match(properties.t, "*a{"?" * question_marks}b*")'


async def test_an_instance_holds_no_more_filters_than_its_bounds(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Filter bounds")
    fn, src = await make_function(registry, owner)
    parent = f"workspaces/{ws_id}"
    many = [f'event = "e{i}"' for i in range(MAX_FILTERS + 1)]
    large = [f'event = "{"x" * 9_000}"', f'event = "{"y" * 9_000}"']
    for filters, said in ((many, f"at most {MAX_FILTERS}"), (large, str(MAX_FILTERS_CHARS))):
        error = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            registry.stub.CreateInstance(
                new_instance(parent, fn, src, settings=VALUES, filters=filters),
                metadata=auth(owner),
            ),
        )
        (field, reason), *_ = violations(error)
        assert field == "instance.filters" and said in reason
    made = await registry.stub.CreateInstance(
        new_instance(parent, fn, src, settings=VALUES, filters=many[:MAX_FILTERS]),
        metadata=auth(owner),
    )
    assert len(made.instance.filters) == MAX_FILTERS
    # An update past the bounds is refused and changes nothing.
    changed = res.Instance(name=made.instance.name, etag=made.instance.etag, filters=many)
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.UpdateInstance(
            pb.UpdateInstanceRequest(instance=changed, update_mask={"paths": ["filters"]}),
            metadata=auth(owner),
        ),
    )
    kept = await registry.stub.GetInstance(
        pb.GetInstanceRequest(name=made.instance.name), metadata=auth(owner)
    )
    assert list(kept.instance.filters) == many[:MAX_FILTERS]


async def test_globs_searching_with_long_question_mark_pieces_are_refused(
    registry: Registry,
) -> None:
    ws_id, owner = await registry.workspace("Glob bounds")
    fn, src = await make_function(registry, owner)
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateInstance(
            new_instance(f"workspaces/{ws_id}", fn, src, settings=VALUES, filters=[searching(100)]),
            metadata=auth(owner),
        ),
    )
    (field, reason), *_ = violations(error)
    assert field == "instance.filters" and "use `*`" in reason
    # Ordinary globs are well within the budget: a date's shape, anchored pieces of any size.
    ordinary = [
        'match(properties.day, "*????-??-??*")',
        f'match(properties.sku, "{"?" * 200}")',
        'match(context.page.url, "https://*.example.com/*")',
    ]
    made = await registry.stub.CreateInstance(
        new_instance(f"workspaces/{ws_id}", fn, src, settings=VALUES, filters=ordinary),
        metadata=auth(owner),
    )
    assert list(made.instance.filters) == ordinary


def test_the_costliest_filters_allowed_match_a_long_string_in_milliseconds() -> None:
    texts = [searching(WILDCARD_BUDGET - 2)]
    allowed = [parse_filter(text) for text in texts]
    assert exceeded(texts, allowed) is None
    over = [searching(WILDCARD_BUDGET - 1)]
    assert exceeded(over, [parse_filter(t) for t in over]) is not None
    event = {"type": "track", "properties": {"t": LONG_TEXT}}
    started = time.process_time()
    kept = apply_filters(allowed, event)
    # ≈ 2.5 ms here; a 9,900-`?` piece took ≈ 200 ms, and fifty of them were accepted.
    assert time.process_time() - started < 0.1
    assert kept is event  # no `b`: nothing matched, nothing dropped


def test_a_pattern_read_from_the_event_cannot_search_long() -> None:
    by_event = [parse_filter("match(properties.t, properties.p)")]
    assert exceeded(["match(properties.t, properties.p)"], by_event) is None
    hostile = {"type": "track", "properties": {"t": LONG_TEXT, "p": f"*a{'?' * 9_900}b*"}}
    started = time.process_time()
    assert apply_filters(by_event, hostile) is hostile  # matches nothing
    assert time.process_time() - started < 0.1
    # A short one still matches (and the filter drops the event).
    assert apply_filters(by_event, {"properties": {"t": "xxaxbxx", "p": "*a?b*"}}) is None


async def test_filters_past_their_bounds_are_refused_before_any_is_parsed(
    registry: Registry,
) -> None:
    # Parsing came first (≈ 50–100 µs a filter, on the registry's one loop): 1,500 filters
    # of 9,900 characters held every tenant's registry calls 55 s, and were then refused.
    ws_id, owner = await registry.workspace("Parsed last")
    parent = f"workspaces/{ws_id}"
    unparsable = ["((( " + "x" * 9_000] * 1_500  # each one would be a syntax error
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateInstance(
            new_instance(
                parent,
                f"{parent}/functions/fn_x",
                f"{parent}/sources/src_x",
                settings=VALUES,
                filters=unparsable,
            ),
            metadata=auth(owner),
        ),
    )
    (field, reason), *_ = violations(error)
    assert field == "instance.filters" and f"at most {MAX_FILTERS}" in reason
