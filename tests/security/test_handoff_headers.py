"""What a function's requests, logs and errors put in a hand-off's headers is bounded.

A function putting event data in its fetch URL (a 22 KB event made a URL of 60 KB) and
answering RetryError made a RETRY message whose headers passed JetStream's 64 KB: refused,
the refusal taken for NATS being down, the pack handed back at once and invoked again, about
150 times a second for ever (the attempt never counted, the retry window never reached).
Whatever a function makes of them, the headers now fit; the debugging ones give way first."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from eventfn_api.registry.v1 import registry_pb2 as rpb
from services.common import streams
from services.executor.handoff import handoff_headers
from services.executor.pack_ref import PackRef
from services.executor.settlement import HandOff
from services.runtime import EventOutcome, InvocationResult, OutcomeKind
from services.runtime.model import LogLine, RequestTrace

# JetStream's own limit on a message's headers.
NATS_HEADER_LIMIT = 64 * 1024
# Large texts cheaply: a run of one character (control ones escape six-fold in JSON).
texts = st.builds(
    lambda piece, times: piece * times,
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=4),
    st.integers(0, 20_000),
)


def header_bytes(headers: dict[str, str]) -> int:
    """What headers take in a NATS message: name, ": ", value, CRLF."""
    return sum(len(k) + len(v.encode()) + 4 for k, v in headers.items())


async def _settle(_: bool) -> None:
    return None


def hand_off(error: str, logs: str, url: str, history_error: str) -> dict[str, str]:
    history = [
        {"attempt": i, "time": "t", "outcome": "retry", "type": "E", "error": history_error}
        for i in range(30)
    ]
    ref = PackRef(settle=_settle, remaining=1, attempt=7, history=orjson.dumps(history).decode())
    outcome = EventOutcome(OutcomeKind.RETRY, "RetryError", error, error)
    handoff = HandOff("retry", ref, outcome, [b'{"messageId":"m-1"}'])
    result = InvocationResult(
        outcomes=[outcome],
        logs=[LogLine("log", logs)] * 3,
        requests=[RequestTrace("POST", url, 500, 1.0, error)] * 20,
    )
    config = rpb.InstanceConfig(id="ins_1", workspace_id="ws_1")
    return handoff_headers(config, handoff, result, datetime.now(UTC))


def test_a_url_of_event_data_no_longer_overflows_the_headers() -> None:
    url = "http://127.0.0.1:18200/?q=" + "%E2%82%AC" * 7250  # the attack's 22 KB event
    headers = hand_off("server 500", "", url, "server 500")
    assert header_bytes(headers) <= NATS_HEADER_LIMIT // 2
    requests = orjson.loads(headers[streams.LAST_REQUESTS])
    assert len(requests) == 20 and all(r["url"].startswith("http://127.0.0.1") for r in requests)


@settings(max_examples=25, deadline=None)
@given(texts, texts, texts, texts)
def test_whatever_a_function_makes_the_headers_fit_and_stay_json(
    error: str, logs: str, url: str, history_error: str
) -> None:
    headers = hand_off(error, logs, url, history_error)
    assert header_bytes(headers) <= NATS_HEADER_LIMIT // 2
    for name in (streams.LAST_REQUESTS, streams.HISTORY, streams.LAST_LOGS, streams.LAST_STACK):
        orjson.loads(headers[name])
    assert headers[streams.ATTEMPT] == "7"
