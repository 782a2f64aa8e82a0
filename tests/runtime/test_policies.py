"""Pure policies: egress decisions, proxies, settings schema, redaction, frames."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.runtime.config import EgressConfig
from services.runtime.egress import METADATA_ADDRESSES, EgressPolicy, proxy_for
from services.runtime.protocol import PREFIX_SIZE, encode_frame, frame_sizes
from services.runtime.redact import REDACTED, compile_secrets, redact
from services.runtime.settings_schema import check_settings

DEFAULT = EgressPolicy.from_config(EgressConfig())


@given(st.ip_addresses())
def test_allowed_addresses_are_global_unicast(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    if DEFAULT.refusal(ip, "h") is None:
        assert ip.is_global and not ip.is_multicast
        assert ip not in METADATA_ADDRESSES


def _embeddings(v4: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """Every IPv6 spelling that carries `v4` and reaches it where translators exist."""
    n = int(v4)
    return [
        ipaddress.IPv6Address(0xFFFF << 32 | n),  # ::ffff:a.b.c.d (mapped)
        ipaddress.IPv6Address(0xFFFF << 48 | n),  # ::ffff:0:a.b.c.d (SIIT)
        ipaddress.IPv6Address(0x64FF9B << 96 | n),  # 64:ff9b::a.b.c.d (NAT64)
        ipaddress.IPv6Address(0x64FF9B0001 << 80 | n << 8),  # 64:ff9b:1::/48 (local NAT64)
        ipaddress.IPv6Address(0x2002 << 112 | n << 80 | 1),  # 2002:a.b.c.d::1 (6to4)
        ipaddress.IPv6Address(n),  # ::a.b.c.d (IPv4-compatible)
    ]


@given(st.ip_addresses(v=4))
def test_an_ipv6_spelling_of_a_refused_ipv4_is_refused(v4: ipaddress.IPv4Address) -> None:
    if DEFAULT.refusal(v4, "h") is not None:
        for ip in _embeddings(v4):
            assert DEFAULT.refusal(ip, "h") is not None, ip


@pytest.mark.parametrize(
    "literal",
    [
        "::7f00:1",
        "::a9fe:a9fe",
        "64:ff9b::7f00:1",
        "64:ff9b:1::a00:1",
        "2002:7f00:1::1",
        "::ffff:0:7f00:1",
        "fec0::1",
        "::ffff:169.254.169.254",
    ],
)
def test_issue_ipv6_forms_are_refused(literal: str) -> None:
    assert DEFAULT.refusal(ipaddress.ip_address(literal), "h") is not None


@given(st.ip_addresses(v=4))
def test_allowlisted_network_passes(ip: ipaddress.IPv4Address) -> None:
    policy = EgressPolicy.from_config(EgressConfig(allow=(f"{ip}/32",)))
    assert policy.refusal(ip, "h") is None


def test_named_refusals() -> None:
    assert "metadata" in (DEFAULT.refusal(ipaddress.ip_address("169.254.169.254"), "m") or "")
    assert "loopback" in (DEFAULT.refusal(ipaddress.ip_address("::ffff:127.0.0.1"), "l") or "")
    assert "private" in (DEFAULT.refusal(ipaddress.ip_address("10.0.0.1"), "p") or "")
    assert DEFAULT.refusal(ipaddress.ip_address("93.184.216.34"), "example.com") is None
    by_name = EgressPolicy.from_config(EgressConfig(allow=("internal.corp",)))
    assert by_name.refusal(ipaddress.ip_address("10.0.0.1"), "internal.corp") is None


def test_proxy_selection_follows_no_proxy() -> None:
    config = EgressConfig(
        https_proxy="http://proxy:3128",
        http_proxy="http://proxy:3128",
        no_proxy=("internal.corp", "10.0.0.0/8", ".svc", "api.local:8443"),
    )
    assert proxy_for("https://api.example.com/x", config) == "http://proxy:3128"
    assert proxy_for("http://a.internal.corp/", config) is None
    assert proxy_for("http://10.1.2.3/", config) is None
    assert proxy_for("http://x.svc/", config) is None
    assert proxy_for("https://api.local:8443/", config) is None
    assert proxy_for("https://api.local:443/", config) == "http://proxy:3128"
    assert proxy_for("https://x/", EgressConfig()) is None


@given(st.lists(st.text(min_size=4, max_size=12), min_size=1, max_size=4), st.text(max_size=40))
def test_redaction_removes_every_secret(secrets: list[str], filler: str) -> None:
    text = filler.join(secrets) + filler
    out = redact(text, compile_secrets(secrets))
    for s in secrets:
        if s not in REDACTED:
            assert s not in out


def test_settings_schema_types() -> None:
    schema = [
        {"name": "key", "type": "string", "required": True},
        {"name": "on", "type": "boolean"},
        {"name": "map", "type": "text-map"},
        {"name": "list", "type": "string-array"},
    ]
    assert check_settings(schema, {"key": "k", "on": False, "map": {"a": "b"}, "list": ["x"]}) == []
    problems = check_settings(schema, {"key": "", "on": "yes", "map": {"a": 1}, "list": "x"})
    assert problems == [
        "settings.key: the required setting 'key' is missing",
        "settings.on: must be true or false, got a string",
        "settings.map: must be a text map of strings: key 'a' holds a number",
        "settings.list: must be an array of strings, got a string",
    ]


@given(
    st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1)),
    st.binary(max_size=100),
)
def test_frame_round_trip(header: dict[str, int], payload: bytes) -> None:
    frame = encode_frame(header, payload)
    head_len, payload_len = frame_sizes(frame[:PREFIX_SIZE])
    assert len(frame) == PREFIX_SIZE + head_len + payload_len
    assert frame[PREFIX_SIZE + head_len :] == payload
