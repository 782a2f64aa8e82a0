"""Page tokens: a caller reads nothing in one and can make none the service accepts."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common.errors import InvalidArgument
from services.common.page_tokens import PageTokens

TOKENS = PageTokens.from_secret("a deployment secret")
REQUEST = pb.ListAuditEventsRequest(parent="workspaces/ws_a", page_size=2)
# A row id numbered across every workspace: what a token must not show.
LAST = ["2026-12-03T09:00:00Z", 48_213_907]


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _continuing(token: str) -> pb.ListAuditEventsRequest:
    request = pb.ListAuditEventsRequest()
    request.CopyFrom(REQUEST)
    request.page_token = token
    return request


def test_a_token_reads_back_and_shows_nothing_of_its_key() -> None:
    first = TOKENS.issue("ListAuditEvents", "ws_a", REQUEST, LAST)
    second = TOKENS.issue("ListAuditEvents", "ws_a", REQUEST, LAST)
    assert TOKENS.read("ListAuditEvents", "ws_a", _continuing(first)) == LAST
    assert first != second  # the same place twice: nothing to compare
    for token in (first, second):
        raw = _raw(token)
        assert b"48213907" not in raw and b"ListAuditEvents" not in raw and b"ws_a" not in raw


def test_another_deployments_token_is_refused() -> None:
    theirs = PageTokens.from_secret("another secret").issue(
        "ListAuditEvents", "ws_a", REQUEST, LAST
    )
    with pytest.raises(InvalidArgument, match="not a token this service made"):
        TOKENS.read("ListAuditEvents", "ws_a", _continuing(theirs))


@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_changed_byte_is_refused(position: int, flip: int) -> None:
    raw = bytearray(_raw(TOKENS.issue("ListAuditEvents", "ws_a", REQUEST, LAST)))
    raw[position % len(raw)] ^= flip
    forged = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(InvalidArgument, match="not a token this service made"):
        TOKENS.read("ListAuditEvents", "ws_a", _continuing(forged))


@given(st.text(min_size=1, max_size=80))
def test_any_text_is_refused_clearly(text: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        TOKENS.read("ListAuditEvents", "ws_a", _continuing(text))
