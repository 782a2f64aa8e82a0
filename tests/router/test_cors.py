"""CORS policy and browser settings document, without sockets."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from services.router.browser_settings import (
    parse_public_url,
    request_api_host,
    settings_document,
)
from services.router.cors import MAX_AGE_SECONDS, CorsPolicy, OriginNotAllowedError
from services.router.settings import RouterSettings


def test_any_origin_is_the_default_and_answers_star() -> None:
    policy = CorsPolicy.parse("*")
    assert policy.origins is None and policy == CorsPolicy()
    headers = dict(policy.response_headers(b"https://anywhere.example"))
    assert headers[b"access-control-allow-origin"] == b"*"
    assert b"retry-after" in headers[b"access-control-expose-headers"]
    assert dict(policy.response_headers(None))[b"access-control-allow-origin"] == b"*"
    policy.check(b"https://anywhere.example")


def test_listed_origins_are_echoed_and_others_refused() -> None:
    policy = CorsPolicy.parse(" https://Shop.example.com/ , http://127.0.0.1:3000")
    assert policy.origins == frozenset({"https://shop.example.com", "http://127.0.0.1:3000"})
    ok = dict(policy.response_headers(b"https://shop.example.com"))
    assert ok[b"access-control-allow-origin"] == b"https://shop.example.com"
    assert ok[b"vary"] == b"Origin"
    other = dict(policy.response_headers(b"https://evil.example"))
    assert b"access-control-allow-origin" not in other and other[b"vary"] == b"Origin"
    with pytest.raises(OriginNotAllowedError, match="EVENTFN_ROUTER_CORS_ORIGINS"):
        policy.check(b"https://evil.example")
    policy.check(None)  # servers send no Origin: never refused


def test_preflight_allows_the_library_headers_and_asked_ones() -> None:
    headers = dict(
        CorsPolicy().preflight_headers(
            b"http://127.0.0.1:1234", b"Authorization, content-type, X-Retry-Count, x-custom", True
        )
    )
    allowed = headers[b"access-control-allow-headers"].split(b", ")
    for name in (b"authorization", b"content-type", b"x-retry-count", b"x-custom"):
        assert name in allowed
    assert allowed.count(b"authorization") == 1
    assert b"POST" in headers[b"access-control-allow-methods"]
    assert headers[b"access-control-max-age"] == str(MAX_AGE_SECONDS).encode()
    assert headers[b"access-control-allow-private-network"] == b"true"
    bad = dict(CorsPolicy().preflight_headers(None, b"x-ok, bad header\r\nx: y", False))
    assert bad[b"access-control-allow-headers"].endswith(b"x-ok")
    assert b"access-control-allow-private-network" not in bad


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("shop.example.com", "scheme://host"),
        ("https://shop.example.com/path", "scheme://host"),
        ("*, https://shop.example.com", "either"),
    ],
)
def test_bad_cors_setting_fails_at_start(value: str, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        RouterSettings(router_cors_origins=value)


def test_public_url_gives_protocol_and_api_host() -> None:
    assert parse_public_url("https://track.example.com") == ("https", "track.example.com/v1")
    assert parse_public_url("http://10.0.0.5:8088/eventfn/") == ("http", "10.0.0.5:8088/eventfn/v1")
    with pytest.raises(ValidationError, match="EVENTFN_ROUTER_PUBLIC_URL"):
        RouterSettings(router_public_url="track.example.com")
    assert RouterSettings(router_public_url="https://t.example").public_endpoint() == (
        "https",
        "t.example/v1",
    )


def test_request_host_becomes_api_host_when_it_is_a_host() -> None:
    assert request_api_host(b"127.0.0.1:8088", "http") == ("http", "127.0.0.1:8088/v1")
    assert request_api_host(b"[::1]:8088", "https") == ("https", "[::1]:8088/v1")
    assert request_api_host(b"evil.example/x?y", "http") is None
    assert request_api_host(None, "http") is None


def test_settings_document_lists_only_segment_io_and_no_metrics() -> None:
    document = orjson.loads(settings_document("wk_1", ("http", "127.0.0.1:9/v1")))
    assert list(document["integrations"]) == ["Segment.io"]
    assert document["integrations"]["Segment.io"] == {
        "apiKey": "wk_1",
        "apiHost": "127.0.0.1:9/v1",
        "protocol": "http",
        "addBundledMetadata": False,
    }
    assert document["metrics"] == {"sampleRate": 0}
    bare = orjson.loads(settings_document("wk_1", None))
    assert "apiHost" not in bare["integrations"]["Segment.io"]
