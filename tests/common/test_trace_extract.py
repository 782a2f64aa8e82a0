"""`telemetry.extract` reads W3C trace headers exactly as the OpenTelemetry propagator does
(it only reads the platform's own form faster)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from opentelemetry import trace

from services.common.telemetry import PROPAGATOR, extract

HEX = "0123456789abcdef"


def hexes(n: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(HEX + "ABCDEF-x "), min_size=n, max_size=n)


traceparents = st.one_of(
    st.builds(
        lambda v, t, s, f, rest: f"{v}-{t}-{s}-{f}{rest}",
        st.sampled_from(["00", "01", "ff", "0g", "0"]),
        st.one_of(hexes(32), st.just("0" * 32), st.text(st.sampled_from(HEX), max_size=33)),
        st.one_of(hexes(16), st.just("0" * 16)),
        st.sampled_from(["00", "01", "02", "03", "ff", "1", "0x"]),
        st.sampled_from(["", "-", "-extra", " ", "\n"]),
    ),
    st.text(max_size=80),
)


def span_context(carrier: dict[str, str]) -> trace.SpanContext:
    return trace.get_current_span(extract(carrier)).get_span_context()


@given(traceparents, st.sampled_from([None, "", "congo=t61rcWkgMzE", "bad value ,"]))
@example("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None)
@example("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", None)
@example("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None)
@example("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None)
@example("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None)
@example(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None)
@example("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", None)
def test_extract_agrees_with_the_propagator(traceparent: str, tracestate: str | None) -> None:
    carrier = {"traceparent": traceparent}
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    expected = trace.get_current_span(PROPAGATOR.extract(carrier)).get_span_context()
    assert span_context(carrier) == expected
    assert span_context(carrier).trace_state == expected.trace_state


def test_the_platforms_own_headers_name_a_remote_parent() -> None:
    context = span_context(
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    )
    assert context.is_valid and context.is_remote and context.trace_flags.sampled
    assert context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert not span_context({}).is_valid
