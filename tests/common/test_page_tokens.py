"""Page tokens: a caller reads nothing in one and can make none the service accepts."""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common.errors import InvalidArgument
from services.common.page_tokens import PageTokens, filters_digest

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


def test_a_tokens_length_does_not_tell_its_numbers() -> None:
    """A sealed text is as long as the plain one: the digits of a row id numbered across
    every workspace told its size (token lengths 156, 158, 162, 168 for 9, 10, 99999, 10**9)."""
    lengths = {
        len(TOKENS.issue("ListAuditEvents", "ws_a", REQUEST, ["2026-12-03T09:00:00Z", n]))
        for n in (9, 10, 99_999, 10**9, 2**64 - 1)
    }
    assert len(lengths) == 1, lengths


def test_a_token_of_the_release_before_is_read() -> None:
    """Replicas of two releases serve one listing during an upgrade: the release before
    signed its tokens (`<body>.<signature>`), with a key of its own derived alike."""
    key = hmac.new(b"a deployment secret", b"eventfn/page-tokens/v1", hashlib.sha256).digest()
    body = orjson.dumps(
        {"v": 1, "m": "ListAuditEvents", "s": "ws_a", "q": filters_digest(REQUEST), "k": LAST}
    )
    signature = hmac.new(key, body, hashlib.sha256).digest()[:16]
    old = ".".join(base64.urlsafe_b64encode(p).decode().rstrip("=") for p in (body, signature))
    assert TOKENS.read("ListAuditEvents", "ws_a", _continuing(old)) == LAST
    with pytest.raises(InvalidArgument, match="not a token this service made"):
        TOKENS.read("ListAuditEvents", "ws_a", _continuing(old[:-3] + "AAA"))
