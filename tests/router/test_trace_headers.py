"""The trace headers the router gives packs when no tracer is installed: the caller's trace
continues when its traceparent is valid W3C; anything else starts a new, valid trace."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from services.router.publisher import trace_headers

W3C = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
HEX = "0123456789abcdef"
VALID = st.builds(
    lambda t, s, f: f"00-{t}-{s}-{f}",
    st.text(HEX, min_size=32, max_size=32).filter(lambda t: t != "0" * 32),
    st.text(HEX, min_size=16, max_size=16),
    st.sampled_from(["00", "01"]),
)


@given(VALID, st.one_of(st.none(), st.just("vendor=1")))
def test_a_valid_traceparent_continues(traceparent: str, tracestate: str | None) -> None:
    out = trace_headers(traceparent, tracestate)
    found = W3C.fullmatch(out["traceparent"])
    assert found is not None
    _, trace_id, _, flags = traceparent.split("-")
    assert (found.group(1), found.group(3)) == (trace_id, flags)
    assert found.group(2) != "0" * 16
    assert out.get("tracestate") == tracestate


@given(st.one_of(st.none(), st.text(max_size=60), VALID.map(str.upper)))
def test_anything_else_starts_a_new_trace(traceparent: str | None) -> None:
    out = trace_headers(traceparent, "vendor=1")
    found = W3C.fullmatch(out["traceparent"])
    assert found is not None and "0" * 32 != found.group(1) and found.group(3) == "01"
    if traceparent is not None and W3C.fullmatch(traceparent.strip()):
        assert found.group(1) == traceparent.strip().split("-")[1]
    else:
        assert "tracestate" not in out


def test_new_traces_differ() -> None:
    assert len({trace_headers(None, None)["traceparent"] for _ in range(100)}) == 100


def test_a_tracestate_past_the_w3c_length_is_dropped() -> None:
    """A client's tracestate rides in every pack's headers, which JetStream bounds."""
    parent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    assert trace_headers(parent, "v=" + "x" * 510)["tracestate"] == "v=" + "x" * 510
    assert "tracestate" not in trace_headers(parent, "v=" + "x" * 511)
