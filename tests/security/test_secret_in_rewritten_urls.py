"""An encrypted setting a function puts in a URL is rewritten by fetch's URL parser (WHATWG,
as in Node: the host lowered, a default port dropped) before the request trace and the error
are kept. Redaction matched the secret as set (and its encodings), so it missed it there and
the secret (a webhook URL's token verbatim) reached deliveries, dead letters and traces, which
read-only members read. Secrets are now matched in either case, and a secret URL also as the
parser writes it and by its path alone."""

from __future__ import annotations

import pytest

from services.runtime import RuntimePool
from tests.runtime.conftest import invoke
from tests.security.conftest import strict_pool

__all__ = ["strict_pool"]

TOKEN = "XyZ9tokenQ7secretW3"
CASES = {
    # A mixed-case key as the account's subdomain.
    "key-in-host": ("AcmeTenant7Xq9LmZ", "https://${settings.apiKey}.invalid/v1", "acmetenant"),
    # A webhook URL kept encrypted whole, with a capital in its host...
    "webhook-host-case": (
        f"https://Hooks.Example.invalid/services/T01/B02/{TOKEN}",
        "${settings.apiKey}",
        TOKEN,
    ),
    # ... or its default port written out, a dot segment, backslashes, a non-ASCII host.
    "webhook-default-port": (
        f"https://hooks.example.invalid:443/services/T01/B02/{TOKEN}",
        "${settings.apiKey}",
        TOKEN,
    ),
    "webhook-dot-segment": (
        f"https://hooks.example.invalid/services/./T01/B02/{TOKEN}",
        "${settings.apiKey}",
        TOKEN,
    ),
    "webhook-backslashes": (
        f"https://hooks.example.invalid\\services\\T01\\B02\\{TOKEN}",
        "${settings.apiKey}",
        TOKEN,
    ),
    "webhook-idn-host": (
        "https://hööks.example.invalid/k/Q7secretW3x",
        "${settings.apiKey}",
        "Q7secretW3x",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_secret_in_a_fetch_url_is_redacted_as_the_parser_rewrites_it(
    strict_pool: RuntimePool, case: str
) -> None:
    secret, url, leaked = CASES[case]
    code = f"""async function onTrack(event, settings) {{
      await fetch(`{url}`, {{method: 'POST', body: '{{}}'}})
    }}"""
    result = await invoke(
        strict_pool, code, settings={"apiKey": secret}, secrets=(secret,), trace_bodies=False
    )
    (outcome,) = result.outcomes
    (request,) = result.requests
    kept = "\n".join([outcome.message or "", outcome.stack or "", request.url, request.error or ""])
    assert "[REDACTED]" in kept
    assert leaked.lower() not in kept.lower(), kept
